//! The `Signature-Input` and `Signature` fields (RFC 9421 §4.1, §4.2):
//! RFC 8941 dictionaries parsed with `sfv`, then checked for the shapes
//! RFC 9421 gives them. Nothing here trusts or verifies anything.

use sfv::{BareItem, Dictionary, FieldType, InnerList, Item, ListEntry, Parser, Version};

/// Longest combined field value accepted (both fields).
pub const MAX_FIELD_BYTES: usize = 8 * 1024;
/// Most signatures (labels) read from one request.
pub const MAX_SIGNATURES: usize = 8;
/// Most components one signature may cover.
pub const MAX_COMPONENTS: usize = 32;

/// Why the fields cannot be read. Client-safe messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("the {0} field is longer than 8 KiB")]
    TooLong(&'static str),
    #[error("the {0} field is not a valid structured-field dictionary")]
    Syntax(&'static str),
    #[error("the {0} field holds more than {MAX_SIGNATURES} signatures")]
    TooMany(&'static str),
    #[error("Signature-Input {0}: not an inner list of component identifiers")]
    InputShape(String),
    #[error("Signature-Input {0}: a component identifier is not a lower-case string")]
    Component(String),
    #[error("Signature-Input {0}: a component is listed twice")]
    Duplicate(String),
    #[error("Signature-Input {0}: covers more than {MAX_COMPONENTS} components")]
    TooManyComponents(String),
    #[error("Signature-Input {0}: parameter {1} has the wrong type")]
    Parameter(String, &'static str),
    #[error("Signature {0}: not a byte sequence")]
    SignatureShape(String),
}

/// One signature's metadata from `Signature-Input`.
#[derive(Clone, Debug, PartialEq)]
pub struct SignatureInput {
    pub label: String,
    /// The covered component identifiers, in order (RFC 9421 §2).
    pub components: Vec<Item>,
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub alg: Option<String>,
    pub keyid: Option<String>,
    pub tag: Option<String>,
    /// The value of the `@signature-params` line: the inner list with its
    /// parameters, serialised (RFC 9421 §2.3).
    pub params_line: String,
}

/// Combines repeated field lines (RFC 9110 §5.3) and bounds the size.
fn combine(name: &'static str, values: &[&str]) -> Result<String, FieldError> {
    let total: usize = values.iter().map(|v| v.len() + 2).sum();
    if total > MAX_FIELD_BYTES {
        return Err(FieldError::TooLong(name));
    }
    Ok(values.join(", "))
}

fn dictionary(name: &'static str, values: &[&str]) -> Result<Dictionary, FieldError> {
    let combined = combine(name, values)?;
    // RFC 9421 uses RFC 8941 structured fields (no dates, no display strings).
    let dict: Dictionary = Parser::new(combined.as_bytes())
        .with_version(Version::Rfc8941)
        .parse()
        .map_err(|_| FieldError::Syntax(name))?;
    if dict.len() > MAX_SIGNATURES {
        return Err(FieldError::TooMany(name));
    }
    Ok(dict)
}

/// Parses `Signature-Input` (RFC 9421 §4.1): every member an inner list of
/// strings, with the §2.3 parameters typed.
pub fn parse_inputs(values: &[&str]) -> Result<Vec<SignatureInput>, FieldError> {
    let dict = dictionary("Signature-Input", values)?;
    let mut inputs = Vec::with_capacity(dict.len());
    for (label, entry) in dict {
        let label = label.as_str().to_owned();
        let ListEntry::InnerList(list) = entry else {
            return Err(FieldError::InputShape(label));
        };
        inputs.push(read_input(label, list)?);
    }
    Ok(inputs)
}

fn read_input(label: String, list: InnerList) -> Result<SignatureInput, FieldError> {
    if list.items.len() > MAX_COMPONENTS {
        return Err(FieldError::TooManyComponents(label));
    }
    let mut seen: Vec<String> = Vec::new();
    for item in &list.items {
        let Some(name) = item.bare_item.as_string() else {
            return Err(FieldError::Component(label));
        };
        let name = name.as_str();
        // §2.1: component names are lower-cased; §2.3: @signature-params is
        // never a covered component.
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(FieldError::Component(label));
        }
        if name == "@signature-params" {
            return Err(FieldError::Component(label));
        }
        // §3.1 / §3.2: a component identifier (name and parameters) appears
        // at most once.
        let identifier = item.serialize();
        if seen.contains(&identifier) {
            return Err(FieldError::Duplicate(label));
        }
        seen.push(identifier);
    }
    let int = |name: &'static str| -> Result<Option<i64>, FieldError> {
        match list.params.get(name) {
            None => Ok(None),
            Some(BareItem::Integer(i)) => Ok(Some(i64::from(*i))),
            Some(_) => Err(FieldError::Parameter(label.clone(), name)),
        }
    };
    let text = |name: &'static str| -> Result<Option<String>, FieldError> {
        match list.params.get(name) {
            None => Ok(None),
            Some(BareItem::String(s)) => Ok(Some(s.as_str().to_owned())),
            Some(_) => Err(FieldError::Parameter(label.clone(), name)),
        }
    };
    let created = int("created")?;
    let expires = int("expires")?;
    let nonce = text("nonce")?;
    let alg = text("alg")?;
    let keyid = text("keyid")?;
    let tag = text("tag")?;
    let params_line = params_line(&list);
    Ok(SignatureInput {
        components: list.items,
        label,
        created,
        expires,
        nonce,
        alg,
        keyid,
        tag,
        params_line,
    })
}

/// The serialisation of an inner list with its parameters (a one-member
/// list serialises exactly as its member).
pub fn params_line(list: &InnerList) -> String {
    let as_list: sfv::List = vec![ListEntry::InnerList(list.clone())];
    as_list.serialize().unwrap_or_else(|| "()".to_owned())
}

/// Parses `Signature` (RFC 9421 §4.2): label → signature bytes.
pub fn parse_signatures(values: &[&str]) -> Result<Vec<(String, Vec<u8>)>, FieldError> {
    let dict = dictionary("Signature", values)?;
    let mut out = Vec::with_capacity(dict.len());
    for (label, entry) in dict {
        let label = label.as_str().to_owned();
        match entry {
            ListEntry::Item(Item {
                bare_item: BareItem::ByteSequence(bytes),
                ..
            }) => out.push((label, bytes)),
            _ => return Err(FieldError::SignatureShape(label)),
        }
    }
    Ok(out)
}
