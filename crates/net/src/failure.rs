//! Why a request could not be forwarded, sorted once: where it failed, whose fault
//! it is, whether another server may be tried, and what the client is told (the
//! model of Pingora's error type, for one proxy hop).
//!
//! Keeping this in one place is what keeps the blame right: a client's broken body
//! or this node's own shortage of descriptors must never count against a server,
//! or a hostile client (or a descriptor flood) could take healthy servers out.

use http::{HeaderValue, Response, StatusCode};

use crate::keepalive::ConnectError;
use crate::pages::error_page;
use crate::Body;

/// What went wrong with one attempt at one server (or before any server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No healthy server was left to try; `after_tries`: some were tried and failed.
    NoServer { after_tries: bool },
    /// The connection to the server failed; `refused`: nobody listens there, so the
    /// server is taken out at once.
    Connect { refused: bool },
    /// This node ran short of descriptors, socket buffers or memory.
    LocalShortage,
    /// The client's body went past the hop's limit while it streamed.
    BodyTooLarge { limit: u64 },
    /// The client's body broke: bad chunked framing, or cut short.
    ClientBody,
    /// The server answered with something that is not HTTP, or hung up mid-answer.
    BadResponse,
    /// The server sent no response head in time.
    Timeout,
}

impl Failure {
    /// The failure behind a connect error from the operating system.
    pub fn of_connect(e: &std::io::Error) -> Failure {
        if crate::budget::is_local_exhaustion(e) {
            Failure::LocalShortage
        } else {
            Failure::Connect {
                refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
            }
        }
    }

    /// The failure behind a connection that could not be had.
    pub fn of_connect_error(e: &ConnectError) -> Failure {
        match e {
            ConnectError::Io(io) => Failure::of_connect(io),
            ConnectError::Timeout | ConnectError::Handshake(_) | ConnectError::Closed => {
                Failure::Connect { refused: false }
            }
        }
    }

    /// The failure behind an exchange that broke after the request went out.
    /// `client_body` says what the client's body did meanwhile (it is checked first:
    /// when the client broke the exchange, whatever the server then saw is not the
    /// server's fault).
    pub fn of_exchange(
        e: &(dyn std::error::Error + 'static),
        client_body: Option<Failure>,
    ) -> Failure {
        if let Some(fault) = client_body {
            return fault;
        }
        match io_cause(e) {
            Some(io) if crate::budget::is_local_exhaustion(io) => Failure::LocalShortage,
            _ => Failure::BadResponse,
        }
    }

    /// Whether it counts against the server that was tried.
    pub fn blames_server(self) -> bool {
        matches!(
            self,
            Failure::Connect { .. } | Failure::BadResponse | Failure::Timeout
        )
    }

    /// Whether the same request may go to another server: only when nothing reached
    /// the first one (and the caller knows the request can be sent again).
    pub fn retry_elsewhere(self) -> bool {
        matches!(self, Failure::Connect { .. })
    }

    /// The page the client gets. `unreachable` is the hop's status when no server
    /// can be reached (503 at a load balancer, 502 at a web server); `pool` names
    /// the servers for a person.
    pub fn page(
        self,
        unreachable: StatusCode,
        pool: &str,
        request_id: &HeaderValue,
    ) -> Response<Body> {
        let (status, detail) = match self {
            Failure::NoServer { after_tries: false } => (
                unreachable,
                format!("No {pool} server is available right now. Please try again in a moment."),
            ),
            Failure::NoServer { after_tries: true } => (
                unreachable,
                format!("Could not reach any {pool} server. Please try again in a moment."),
            ),
            Failure::Connect { .. } => (
                unreachable,
                format!("Could not connect to a {pool} server. Please try again in a moment."),
            ),
            Failure::LocalShortage => (
                StatusCode::SERVICE_UNAVAILABLE,
                "This server is overloaded right now. Please try again in a moment.".into(),
            ),
            Failure::BodyTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request body is larger than the {limit} bytes this site accepts."),
            ),
            Failure::ClientBody => (
                StatusCode::BAD_REQUEST,
                "The request body was malformed or cut short.".into(),
            ),
            Failure::BadResponse => (
                StatusCode::BAD_GATEWAY,
                format!("The {pool} server did not give a valid answer."),
            ),
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("The {pool} server did not answer in time."),
            ),
        };
        let mut resp = error_page(status, &detail, Some(request_id));
        if matches!(self, Failure::BodyTooLarge { .. } | Failure::ClientBody) {
            // Body bytes may still be coming: this connection cannot carry another
            // request, and it lingers so the client reads this page (`linger`).
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The operating system's error in an error's chain, if there is one.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = err.source();
    }
    None
}

/// The innermost message of an error chain: what to log.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_server_did_is_held_against_it() {
        let shortage = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(Failure::of_connect(&shortage), Failure::LocalShortage);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Failure::of_connect(&refused),
            Failure::Connect { refused: true }
        );
        for (failure, blamed, retried) in [
            (Failure::Connect { refused: true }, true, true),
            (Failure::Connect { refused: false }, true, true),
            (Failure::BadResponse, true, false),
            (Failure::Timeout, true, false),
            (Failure::LocalShortage, false, false),
            (Failure::BodyTooLarge { limit: 1 }, false, false),
            (Failure::ClientBody, false, false),
            (Failure::NoServer { after_tries: true }, false, false),
        ] {
            assert_eq!(failure.blames_server(), blamed, "{failure:?}");
            assert_eq!(failure.retry_elsewhere(), retried, "{failure:?}");
        }
    }

    #[test]
    fn pages_say_whose_fault_it_was() {
        let id = HeaderValue::from_static("rid");
        let page = |f: Failure| f.page(StatusCode::BAD_GATEWAY, "app", &id);
        assert_eq!(page(Failure::Connect { refused: true }).status(), 502);
        assert_eq!(page(Failure::LocalShortage).status(), 503);
        assert_eq!(page(Failure::Timeout).status(), 504);
        let too_large = page(Failure::BodyTooLarge { limit: 10 });
        assert_eq!(too_large.status(), 413);
        assert_eq!(too_large.headers()[http::header::CONNECTION], "close");
        assert_eq!(page(Failure::ClientBody).status(), 400);
    }
}
