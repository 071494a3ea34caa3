//! Building the HTTP requests sent to Nacos.

use super::ApiVersion;

/// An HTTP request to send to Nacos through the configured Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosRequest {
    pub method: &'static str,
    pub path: String,
    /// Form-encoded body (login only).
    pub body: Option<String>,
}

/// What identifies a service in Nacos.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub namespace_id: String,
    pub group: String,
    pub name: String,
}

/// One service's instance-list request but for its token, which is all that
/// changes between polls: built once, not percent-encoded again every interval.
/// `clusters` is passed on where the API takes it, though the plugin filters
/// clusters itself (r-nacos ignores it). `healthyOnly=false` so that unhealthy
/// instances and the protection flag are seen and judged here, the same on every
/// server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    path: String,
}

impl ListRequest {
    pub fn new(api: ApiVersion, service: &ServiceKey, clusters: &[String]) -> Self {
        let mut query = Query::default();
        match api {
            ApiVersion::V1 => {
                query.push("serviceName", &service.name);
                query.push("groupName", &service.group);
                query.push("namespaceId", &service.namespace_id);
                if !clusters.is_empty() {
                    query.push("clusters", &clusters.join(","));
                }
            }
            ApiVersion::V3 => {
                query.push("namespaceId", &service.namespace_id);
                query.push("groupName", &service.group);
                query.push("serviceName", &service.name);
                if !clusters.is_empty() {
                    query.push("clusterName", &clusters.join(","));
                }
            }
        }
        query.push("healthyOnly", "false");
        let base = match api {
            ApiVersion::V1 => "/nacos/v1/ns/instance/list",
            ApiVersion::V3 => "/nacos/v3/client/ns/instance/list",
        };
        Self {
            path: format!("{base}?{}", query.0),
        }
    }

    pub fn with_token(&self, access_token: Option<&str>) -> NacosRequest {
        let mut query = Query(self.path.clone());
        if let Some(token) = access_token {
            query.push("accessToken", token);
        }
        NacosRequest {
            method: "GET",
            path: query.0,
            body: None,
        }
    }
}

/// The login request.
pub fn login(api: ApiVersion, username: &str, password: &str) -> NacosRequest {
    let mut form = Query::default();
    form.push("username", username);
    form.push("password", password);
    let path = match api {
        ApiVersion::V1 => "/nacos/v1/auth/login",
        ApiVersion::V3 => "/nacos/v3/auth/user/login",
    };
    NacosRequest {
        method: "POST",
        path: path.to_string(),
        body: Some(form.0),
    }
}

/// `application/x-www-form-urlencoded` pairs, also used as a URL query.
#[derive(Default)]
struct Query(String);

impl Query {
    fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        percent_encode_into(&mut self.0, key);
        self.0.push('=');
        percent_encode_into(&mut self.0, value);
    }
}

/// Percent-encode all but RFC 3986's unreserved characters; runs of unreserved
/// ones are copied whole (a new poller builds thousands of queries at once).
fn percent_encode_into(out: &mut String, text: &str) {
    let unreserved =
        |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~');
    let mut rest = text;
    while !rest.is_empty() {
        let plain = rest
            .bytes()
            .position(|byte| !unreserved(byte))
            .unwrap_or(rest.len());
        // Unreserved bytes are ASCII, so `plain` is a character boundary.
        out.push_str(rest.get(..plain).unwrap_or_default());
        let tail = rest.get(plain..).unwrap_or_default();
        let Some(c) = tail.chars().next() else {
            break;
        };
        for byte in c.encode_utf8(&mut [0; 4]).bytes() {
            out.push('%');
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
        rest = tail.get(c.len_utf8()..).unwrap_or_default();
    }
}

fn hex_digit(nibble: u8) -> char {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    DIGITS
        .get(usize::from(nibble))
        .map_or('0', |digit| char::from(*digit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn demo() -> ServiceKey {
        ServiceKey {
            namespace_id: "public".into(),
            group: "DEFAULT_GROUP".into(),
            name: "demo".into(),
        }
    }

    #[test]
    fn v1_list_names_service_group_namespace_and_asks_for_all_instances() {
        let request = ListRequest::new(ApiVersion::V1, &demo(), &[]).with_token(None);
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.path,
            "/nacos/v1/ns/instance/list?serviceName=demo&groupName=DEFAULT_GROUP\
             &namespaceId=public&healthyOnly=false"
        );
        assert_eq!(request.body, None);
    }

    #[test]
    fn v1_list_carries_clusters_and_token() {
        let clusters = vec!["A".to_string(), "B".to_string()];
        let request =
            ListRequest::new(ApiVersion::V1, &demo(), &clusters).with_token(Some("tok+en/="));
        assert!(
            request.path.contains("&clusters=A%2CB&"),
            "{}",
            request.path
        );
        assert!(
            request.path.ends_with("&accessToken=tok%2Ben%2F%3D"),
            "{}",
            request.path
        );
    }

    #[test]
    fn a_list_request_built_once_carries_each_token_alone() {
        let list = ListRequest::new(ApiVersion::V1, &demo(), &[]);
        let first = list.with_token(Some("first"));
        let second = list.with_token(Some("second"));
        let none = list.with_token(None);
        assert!(first.path.ends_with("&healthyOnly=false&accessToken=first"));
        assert!(second
            .path
            .ends_with("&healthyOnly=false&accessToken=second"));
        assert!(!second.path.contains("first"), "{}", second.path);
        assert!(none.path.ends_with("&healthyOnly=false"), "{}", none.path);
    }

    #[test]
    fn v3_list_uses_the_client_api_and_cluster_name() {
        let service = ServiceKey {
            namespace_id: "dev ns".into(),
            group: "g&1".into(),
            name: "order@svc".into(),
        };
        let request =
            ListRequest::new(ApiVersion::V3, &service, &["A".to_string()]).with_token(Some("t"));
        assert_eq!(
            request.path,
            "/nacos/v3/client/ns/instance/list?namespaceId=dev%20ns&groupName=g%261\
             &serviceName=order%40svc&clusterName=A&healthyOnly=false&accessToken=t"
        );
    }

    #[test]
    fn login_posts_an_encoded_form() {
        let v1 = login(ApiVersion::V1, "nacos", "p&ss=word ü");
        assert_eq!(v1.method, "POST");
        assert_eq!(v1.path, "/nacos/v1/auth/login");
        assert_eq!(
            v1.body.as_deref(),
            Some("username=nacos&password=p%26ss%3Dword%20%C3%BC")
        );
        assert_eq!(
            login(ApiVersion::V3, "a", "b").path,
            "/nacos/v3/auth/user/login"
        );
    }
}
