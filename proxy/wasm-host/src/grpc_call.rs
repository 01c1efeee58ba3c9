//! What a guest sees of a gRPC call: a stream gets every event as it comes; a unary call gets one
//! `proxy_on_grpc_receive` with its response, or one `proxy_on_grpc_close` with the failure, as in
//! Envoy (and as the SDK's dispatcher expects).

use crate::callout::{GrpcEvent, GrpcStatus};

/// Folds a unary call's events into the one event its guest gets.
#[derive(Default)]
pub(crate) struct UnaryResponse {
    message: Option<Vec<u8>>,
    messages: usize,
}

impl UnaryResponse {
    /// Takes the call's next event; returns the event for the guest once the call is over:
    /// `Message` for a response, `Close` for a failure.
    pub(crate) fn push(&mut self, event: GrpcEvent) -> Option<GrpcEvent> {
        match event {
            GrpcEvent::Message(message) => {
                self.messages += 1;
                self.message.get_or_insert(message);
                None
            }
            GrpcEvent::InitialMetadata(_) | GrpcEvent::TrailingMetadata(_) => None,
            GrpcEvent::Close(status) if status.code != GrpcStatus::OK => {
                Some(GrpcEvent::Close(status))
            }
            GrpcEvent::Close(_) => Some(match (self.message.take(), self.messages) {
                (Some(message), 1) => GrpcEvent::Message(message),
                (None, _) => GrpcEvent::Close(GrpcStatus::new(
                    GrpcStatus::INTERNAL,
                    "the unary call answered no message",
                )),
                (Some(_), _) => GrpcEvent::Close(GrpcStatus::new(
                    GrpcStatus::INTERNAL,
                    "the unary call answered more than one message",
                )),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::Headers;

    fn fold(events: Vec<GrpcEvent>) -> Vec<GrpcEvent> {
        let mut unary = UnaryResponse::default();
        events.into_iter().filter_map(|e| unary.push(e)).collect()
    }

    fn close(code: u32, message: &str) -> GrpcEvent {
        GrpcEvent::Close(GrpcStatus::new(code, message))
    }

    #[test]
    fn a_unary_response_is_its_one_message() {
        let events = vec![
            GrpcEvent::InitialMetadata(Headers::new()),
            GrpcEvent::Message(b"pong".to_vec()),
            GrpcEvent::TrailingMetadata(Headers::new()),
            close(0, ""),
        ];
        assert_eq!(fold(events), vec![GrpcEvent::Message(b"pong".to_vec())]);
    }

    #[test]
    fn a_unary_failure_is_its_status_even_after_a_message() {
        let events = vec![GrpcEvent::Message(b"x".to_vec()), close(7, "denied")];
        assert_eq!(fold(events), vec![close(7, "denied")]);
    }

    #[test]
    fn a_unary_ok_with_no_message_or_two_is_internal() {
        assert!(matches!(
            fold(vec![close(0, "")])[..],
            [GrpcEvent::Close(GrpcStatus { code: 13, .. })]
        ));
        let two = vec![
            GrpcEvent::Message(b"a".to_vec()),
            GrpcEvent::Message(b"b".to_vec()),
            close(0, ""),
        ];
        assert!(matches!(
            fold(two)[..],
            [GrpcEvent::Close(GrpcStatus { code: 13, .. })]
        ));
    }
}
