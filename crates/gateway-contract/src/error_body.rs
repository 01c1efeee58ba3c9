//! The JSON error body every component of the gateway answers clients with.

use serde::Serialize;

/// `{"error": {"status": 401, "code": "missing_api_key", "message": "...", "request_id": "..."}}`.
/// `code` is a stable machine-readable reason; `message` is for humans and may change.
pub fn error_body(status: u16, code: &str, message: &str, request_id: Option<&str>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Inner<'a> {
        status: u16,
        code: &'a str,
        message: &'a str,
        request_id: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Outer<'a> {
        error: Inner<'a>,
    }
    serde_json::to_vec(&Outer {
        error: Inner {
            status,
            code,
            message,
            request_id,
        },
    })
    .expect("serialising plain strings cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_stable_shape() {
        let body = error_body(401, "missing_api_key", "no key", Some("abc"));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["status"], 401);
        assert_eq!(value["error"]["code"], "missing_api_key");
        assert_eq!(value["error"]["message"], "no key");
        assert_eq!(value["error"]["request_id"], "abc");
    }

    #[test]
    fn error_body_without_request_id_is_null() {
        let body = error_body(500, "x", "y", None);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(value["error"]["request_id"].is_null());
    }
}
