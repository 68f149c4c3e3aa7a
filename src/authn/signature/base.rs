//! The signature base (RFC 9421 §2.5): one line per covered component,
//! then the `@signature-params` line. Signing and verifying build it with
//! the same code; the RFC's Appendix B examples pin it down.

use sfv::{FieldType, Item};

use crate::origin::Origin;
use crate::request::{Headers, RequestContext};

/// Why a signature base cannot be built. Client-safe messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BaseError {
    #[error("component {0} is not present in the request")]
    Absent(String),
    #[error(
        "component {0} is not supported (tollgate covers @method, @authority, @scheme, @target-uri, @request-target, @path, @query and plain header fields)"
    )]
    Unsupported(String),
    #[error("component {0} has a value that cannot be signed (line break)")]
    Value(String),
}

/// The parts of a request a signature can cover, as the client addressed
/// it: the external scheme and host come from the trusted origin, never
/// from what the client says about itself.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    /// Upper-case method.
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// `host[:port]`: host lower-case, default port omitted (RFC 9421
    /// §2.2.3, RFC 9110 §4.2.3).
    pub authority: String,
    /// The path as sent, never empty.
    pub path: &'a str,
    /// The query without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a Headers,
}

impl<'a> Message<'a> {
    /// The message of a request under a trusted origin.
    pub fn from_request(request: &'a RequestContext, origin: &Origin) -> Self {
        Message {
            method: &request.method,
            scheme: origin.scheme,
            authority: authority(origin.scheme, &origin.host, origin.port),
            path: if request.path.is_empty() {
                "/"
            } else {
                &request.path
            },
            query: request.query.as_deref(),
            headers: &request.headers,
        }
    }
}

/// `host[:port]`, the host lower-cased (bracketed when IPv6) and the port
/// left out when it is the scheme's default.
pub fn authority(scheme: &str, host: &str, port: Option<u16>) -> String {
    let host = host.to_ascii_lowercase();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let default = match scheme {
        "https" => 443,
        _ => 80,
    };
    match port {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host,
    }
}

/// The value of one component (RFC 9421 §2.1, §2.2).
fn component_value(message: &Message<'_>, component: &Item) -> Result<String, BaseError> {
    let identifier = component.serialize();
    let name = component
        .bare_item
        .as_string()
        .map(|s| s.as_str())
        .ok_or_else(|| BaseError::Unsupported(identifier.clone()))?;
    // Parameters (sf, key, bs, req, tr, name) change how a value is derived;
    // tollgate supports none of them, so it refuses rather than guess.
    if !component.params.is_empty() {
        return Err(BaseError::Unsupported(identifier));
    }
    let query = || format!("?{}", message.query.unwrap_or_default());
    let value = match name {
        "@method" => message.method.to_owned(),
        // §2.2.2: the full target URI.
        "@target-uri" => {
            let mut uri = format!("{}://{}{}", message.scheme, message.authority, message.path);
            if let Some(q) = message.query {
                uri.push('?');
                uri.push_str(q);
            }
            uri
        }
        "@authority" => message.authority.clone(),
        "@scheme" => message.scheme.to_owned(),
        // §2.2.5: path and query, origin-form.
        "@request-target" => match message.query {
            Some(q) => format!("{}?{q}", message.path),
            None => message.path.to_owned(),
        },
        "@path" => message.path.to_owned(),
        // §2.2.7: with the leading `?`; no query at all is `?` too.
        "@query" => query(),
        n if n.starts_with('@') => return Err(BaseError::Unsupported(identifier)),
        // §2.1: a header field: every field line's value, trimmed, joined
        // with ", " in order.
        field => {
            let values: Vec<&str> = message.headers.get_all(field).map(str::trim).collect();
            if values.is_empty() {
                return Err(BaseError::Absent(identifier));
            }
            values.join(", ")
        }
    };
    if value.contains(['\n', '\r']) {
        return Err(BaseError::Value(identifier));
    }
    Ok(value)
}

/// Builds the signature base for `components` (RFC 9421 §2.5): each line
/// `"<identifier>": <value>`, then `"@signature-params": <params_line>`,
/// no trailing newline.
pub fn signature_base(
    message: &Message<'_>,
    components: &[Item],
    params_line: &str,
) -> Result<String, BaseError> {
    let mut base = String::new();
    for component in components {
        let value = component_value(message, component)?;
        base.push_str(&component.serialize());
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params_line);
    Ok(base)
}
