//! The answer a rejected request gets: a status and a small JSON body with a
//! stable code, prepared once per guard rather than per request.

use serde::Serialize;

use crate::pure::routing::decision::RejectCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectResponse {
    pub status: u32,
    pub body: String,
}

pub const REJECT_CONTENT_TYPE: &str = "application/json";

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    service: &'a str,
    group: &'a str,
    message: String,
}

/// One response per code, in [`RejectCode::ALL`] order.
pub fn prepare(status: u32, service: &str, group: &str) -> Vec<RejectResponse> {
    RejectCode::ALL
        .iter()
        .map(|code| {
            let message = match code {
                RejectCode::NoHealthyInstance => {
                    format!("service {service} has no healthy instance in Nacos")
                }
                RejectCode::InstanceDeregistered => format!(
                    "the requested instance of service {service} is deregistered or unhealthy"
                ),
                RejectCode::RegistryUnavailable => {
                    format!("Nacos has not answered for service {service} recently enough")
                }
            };
            let body = Body {
                code: code.as_str(),
                service,
                group,
                message,
            };
            RejectResponse {
                status,
                // Serializing a struct of strings cannot fail; the fallback keeps the code.
                body: serde_json::to_string(&body)
                    .unwrap_or_else(|_| format!("{{\"code\":\"{}\"}}", code.as_str())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn every_code_gets_a_json_body_naming_the_service() {
        let responses = prepare(503, "de\"mo", "G");
        assert_eq!(responses.len(), 3);
        for (response, code) in responses.iter().zip(RejectCode::ALL) {
            assert_eq!(response.status, 503);
            let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(body["code"], code.as_str());
            assert_eq!(body["service"], "de\"mo");
            assert_eq!(body["group"], "G");
            assert!(body["message"].as_str().unwrap().contains("de\"mo"));
        }
    }
}
