//! The answer a rejected request gets: a status and a small JSON body with a
//! stable code, written once per guard rather than per request.

use std::cell::OnceCell;

use crate::pure::json::quoted;
use crate::pure::routing::decision::RejectCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectResponse {
    pub status: u32,
    pub body: String,
}

pub const REJECT_CONTENT_TYPE: &str = "application/json";

/// A guard's rejections, one per code, each written on its first use: most
/// guards never reject, and at 10,000 learned services writing them all up front
/// was a fifth of a new poller's first tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejections {
    status: u32,
    service: String,
    group: String,
    no_healthy_instance: OnceCell<RejectResponse>,
    instance_deregistered: OnceCell<RejectResponse>,
    registry_unavailable: OnceCell<RejectResponse>,
}

impl Rejections {
    pub fn prepare(status: u32, service: &str, group: &str) -> Self {
        Self {
            status,
            service: service.to_string(),
            group: group.to_string(),
            no_healthy_instance: OnceCell::new(),
            instance_deregistered: OnceCell::new(),
            registry_unavailable: OnceCell::new(),
        }
    }

    pub fn get(&self, code: RejectCode) -> &RejectResponse {
        let cell = match code {
            RejectCode::NoHealthyInstance => &self.no_healthy_instance,
            RejectCode::InstanceDeregistered => &self.instance_deregistered,
            RejectCode::RegistryUnavailable => &self.registry_unavailable,
        };
        cell.get_or_init(|| prepare_one(code, self.status, &self.service, &self.group))
    }
}

fn prepare_one(code: RejectCode, status: u32, service: &str, group: &str) -> RejectResponse {
    let message = match code {
        RejectCode::NoHealthyInstance => {
            format!("service {service} has no healthy instance in Nacos")
        }
        RejectCode::InstanceDeregistered => {
            format!("the requested instance of service {service} is deregistered or unhealthy")
        }
        RejectCode::RegistryUnavailable => {
            format!("Nacos has not answered for service {service} recently enough")
        }
    };
    RejectResponse {
        status,
        // Written directly rather than through a derived `Serialize`: only strings,
        // and the plugin links the string escaper anyway.
        body: format!(
            r#"{{"code":{},"service":{},"group":{},"message":{}}}"#,
            quoted(code.as_str()),
            quoted(service),
            quoted(group),
            quoted(&message)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn every_code_gets_a_json_body_naming_the_service() {
        let responses = Rejections::prepare(503, "de\"mo", "G");
        for code in RejectCode::ALL {
            let response = responses.get(code);
            assert_eq!(response.status, 503);
            let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(body["code"], code.as_str());
            assert_eq!(body["service"], "de\"mo");
            assert_eq!(body["group"], "G");
            assert!(body["message"].as_str().unwrap().contains("de\"mo"));
        }
        // The bytes the derived `Serialize` wrote, field order included.
        assert_eq!(
            responses.get(RejectCode::NoHealthyInstance).body,
            r#"{"code":"no_healthy_instance","service":"de\"mo","group":"G","message":"service de\"mo has no healthy instance in Nacos"}"#
        );
    }
}
