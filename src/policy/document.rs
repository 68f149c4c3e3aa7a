//! Policy files: multi-document YAML holding `ApiPolicy`, `AppRegistration`
//! and `v1 Secret` documents, read strictly.
//!
//! Reading a document happens in three steps, so each error can name the
//! file, the document and the field:
//!
//! 1. YAML → untyped values (serde-saphyr, with its default budget against
//!    alias bombs and duplicate keys refused);
//! 2. dispatch on `apiVersion` + `kind` (an unknown kind is an error, never
//!    silently skipped);
//! 3. the typed read through `serde_path_to_error`, which records the field
//!    path (`spec.plans[0].limits[1].rate.burst`) of the first error. Every
//!    policy struct denies unknown fields; `metadata` is checked against the
//!    Kubernetes `ObjectMeta` field names.
//!
//! Documents are numbered from 1 in the order they appear, counting only
//! non-empty documents (a stray `---` does not shift the numbers).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::catalog::{Kind, ObjectRef};
use super::types::{ApiPolicy, ApiPolicySpec, AppRegistration, AppRegistrationSpec};

/// The API group/version of tollgate's own documents.
pub const API_VERSION: &str = "tollgate.dev/v1alpha1";

/// Files larger than this are refused before parsing: a policy file is a
/// few KiB, and a bound keeps a mistaken path (a log file, a binary) from
/// costing memory and time.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One document of a policy file (or, later, an object from the cluster).
/// Its `Debug` output never shows a Secret's values.
#[derive(Clone)]
pub enum Document {
    ApiPolicy(Box<ApiPolicy>),
    AppRegistration(Box<AppRegistration>),
    /// A `v1 Secret`; `stringData` is already merged into `data`.
    Secret(Box<Secret>),
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Document::ApiPolicy(p) => f.debug_tuple("ApiPolicy").field(p).finish(),
            Document::AppRegistration(a) => f.debug_tuple("AppRegistration").field(a).finish(),
            Document::Secret(s) => f
                .debug_struct("Secret")
                .field("namespace", &self.namespace())
                .field("name", &self.name())
                .field(
                    "keys",
                    &s.data.iter().flatten().map(|(k, _)| k).collect::<Vec<_>>(),
                )
                .finish_non_exhaustive(),
        }
    }
}

impl Document {
    /// `ApiPolicy`, `AppRegistration` or `Secret`.
    pub fn kind(&self) -> &'static str {
        match self {
            Document::ApiPolicy(_) => "ApiPolicy",
            Document::AppRegistration(_) => "AppRegistration",
            Document::Secret(_) => "Secret",
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Document::ApiPolicy(p) => &p.metadata,
            Document::AppRegistration(a) => &a.metadata,
            Document::Secret(s) => &s.metadata,
        }
    }

    /// The document's namespace (`default` when the file leaves it out).
    pub fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or("default")
    }

    /// The document's name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }
}

/// Where a document came from, for error messages and for ordering
/// (older documents win host conflicts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Document `index` (from 1) of a policy file.
    File { path: PathBuf, index: usize },
    /// An object read from the Kubernetes API.
    Cluster,
}

/// A document and where it came from.
#[derive(Clone, Debug)]
pub struct LoadedDocument {
    pub origin: Origin,
    pub document: Document,
}

impl LoadedDocument {
    /// Names the document for error messages:
    /// `bikes.yaml: document 2 (ApiPolicy mobility/bikes)`, or
    /// `ApiPolicy mobility/bikes` for a cluster object.
    pub fn describe(&self) -> String {
        let what = format!(
            "{} {}/{}",
            self.document.kind(),
            self.document.namespace(),
            self.document.name()
        );
        match &self.origin {
            Origin::File { path, index } => {
                format!("{}: document {index} ({what})", path.display())
            }
            Origin::Cluster => what,
        }
    }
}

/// One problem found while reading policy files. Its message never holds
/// a Secret's value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    pub file: PathBuf,
    /// Document number (from 1) and a label such as `ApiPolicy
    /// mobility/bikes`; `None` for problems of the whole file.
    pub document: Option<(usize, String)>,
    /// Field path inside the document, e.g. `spec.routes[0].cost`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((index, label)) = &self.document {
            if label.is_empty() {
                write!(f, ": document {index}")?;
            } else {
                write!(f, ": document {index} ({label})")?;
            }
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while reading a set of policy files.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<DocumentError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(f, &self.0)
    }
}

/// Writes one problem per line (the shape of every policy error list).
pub(crate) fn write_lines<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str("\n")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

/// Reads every file in order and returns all their documents, or every
/// problem found (all files are read, so one run reports them all).
/// Duplicate `(kind, namespace, name)` across files are errors.
pub fn load_files(paths: &[PathBuf]) -> Result<Vec<LoadedDocument>, LoadErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match read_file(path) {
            Ok(text) => files.push((path.clone(), text)),
            Err(e) => errors.push(e),
        }
    }
    match parse_files(&files) {
        Ok(docs) if errors.is_empty() => Ok(docs),
        Ok(_) => Err(LoadErrors(errors)),
        Err(LoadErrors(mut more)) => {
            errors.append(&mut more);
            Err(LoadErrors(errors))
        }
    }
}

/// Parses already-read files (path, text) in order, then checks for
/// duplicate `(kind, namespace, name)` across all of them.
pub fn parse_files(files: &[(PathBuf, String)]) -> Result<Vec<LoadedDocument>, LoadErrors> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in files {
        match parse_documents(path, text) {
            Ok(mut parsed) => docs.append(&mut parsed),
            Err(LoadErrors(mut e)) => errors.append(&mut e),
        }
    }
    errors.extend(find_duplicates(&docs));
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(LoadErrors(errors))
    }
}

/// Reads a file as UTF-8, refusing files over [`MAX_FILE_BYTES`]. The size
/// is checked on the bytes actually read, so a file that grows between
/// `stat` and `read` is still bounded.
pub fn read_file(path: &Path) -> Result<String, DocumentError> {
    use std::io::Read as _;
    let file_error = |message: String| DocumentError {
        file: path.to_owned(),
        document: None,
        field: None,
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| file_error(format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(file_error(format!(
            "file is larger than {MAX_FILE_BYTES} bytes; refusing to parse it"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        file_error(format!(
            "not UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Parses the text of one policy file (`path` is only used in messages).
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<LoadedDocument>, LoadErrors> {
    let results = parse_each(path, text).map_err(|e| LoadErrors(vec![e]))?;
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for parsed in results {
        match parsed {
            Parsed::Loaded(doc) => docs.push(doc),
            Parsed::Rejected(rejected) => errors.push(rejected.error),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(LoadErrors(errors))
    }
}

/// A document of a policy file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedDocument {
    /// The object it would have been, when its kind and name could be
    /// read: a reload keeps that object's previous version serving.
    pub object: Option<ObjectRef>,
    pub error: DocumentError,
}

/// One document of a file, read or not.
#[derive(Clone, Debug)]
pub enum Parsed {
    Loaded(LoadedDocument),
    Rejected(RejectedDocument),
}

/// Parses the documents of one file one by one, so a broken document is
/// an error of its own and the others still load. `Err`: the file as a
/// whole is not YAML (no document can be trusted).
pub fn parse_each(path: &Path, text: &str) -> Result<Vec<Parsed>, DocumentError> {
    // Snippets are off: a YAML error inside a Secret would otherwise print
    // the Secret's lines. The message still carries line and column.
    // Booleans are YAML 1.2 only (`true`/`false`): with YAML 1.1 rules the
    // namespace `n` or a key `on` would silently become a boolean.
    // The parser's default budget allows 1,024 documents and 250,000 nodes:
    // too few for a file of thousands of AppRegistrations and Secrets. The
    // file size cap (MAX_FILE_BYTES) already bounds the work; these limits
    // stay a second line of defence against document and node storms.
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_documents: 100_000,
            max_nodes: 2_000_000,
            max_events: 8_000_000,
        },
    };
    let values: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| DocumentError {
            file: path.to_owned(),
            document: None,
            field: None,
            // The library's hint names its own API, not the user's file.
            message: format!("invalid YAML: {e}")
                .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
        })?;
    let results = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let index = i + 1;
            match parse_document(value) {
                Ok(document) => Parsed::Loaded(LoadedDocument {
                    origin: Origin::File {
                        path: path.to_owned(),
                        index,
                    },
                    document,
                }),
                Err(e) => Parsed::Rejected(RejectedDocument {
                    object: e.object.map(|o| *o),
                    error: DocumentError {
                        file: path.to_owned(),
                        document: Some((index, e.label)),
                        field: e.field,
                        message: e.message,
                    },
                }),
            }
        })
        .collect();
    Ok(results)
}

/// Reads one object from the Kubernetes API (its JSON) with the same
/// strict reader as policy files. `Err`: the object it would have been
/// (when known), the field and the message.
pub fn read_object(value: Value) -> Result<Document, (Option<ObjectRef>, Option<String>, String)> {
    parse_document(value).map_err(|e| (e.object.map(|o| *o), e.field, e.message))
}

/// An error inside one document, before the file is known.
struct DocError {
    label: String,
    /// The object the document would have been, when its kind and name
    /// could be read (boxed: errors travel by value through every reader).
    object: Option<Box<ObjectRef>>,
    field: Option<String>,
    message: String,
}

/// Reads one untyped document: dispatch on apiVersion + kind, then the
/// strict typed read.
fn parse_document(value: Value) -> Result<Document, DocError> {
    let Value::Object(map) = value else {
        return Err(DocError {
            label: String::new(),
            object: None,
            field: None,
            message: format!(
                "expected a mapping with apiVersion and kind, found {}",
                json_type(&value)
            ),
        });
    };
    let text_field = |name: &str| -> Result<String, DocError> {
        match map.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(DocError {
                label: String::new(),
                object: None,
                field: Some(name.to_owned()),
                message: format!("expected a string, found {}", json_type(other)),
            }),
            None => Err(DocError {
                label: String::new(),
                object: None,
                field: Some(name.to_owned()),
                message: "missing".to_owned(),
            }),
        }
    };
    let api_version = text_field("apiVersion")?;
    let kind = text_field("kind")?;
    // The label names the document in every later message; it is built
    // from metadata before the typed read so a bad spec still names it.
    let label = |kind: &str| {
        let meta = map.get("metadata").and_then(Value::as_object);
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        match name {
            Some(name) => format!("{kind} {namespace}/{name}"),
            None => kind.to_owned(),
        }
    };
    // The object the document names, so an error in its body is still
    // attributed to it (a reload keeps its previous version serving).
    let object = |kind: Kind| {
        let meta = map.get("metadata").and_then(Value::as_object);
        let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str)?;
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        Some(Box::new(ObjectRef::new(kind, namespace, name)))
    };
    let about = |kind: Kind| {
        let object = object(kind);
        move |mut error: DocError| {
            error.object = object;
            error
        }
    };
    match (api_version.as_str(), kind.as_str()) {
        (API_VERSION, "ApiPolicy") => {
            let (label, about) = (label("ApiPolicy"), about(Kind::ApiPolicy));
            read_policy(map, label).map_err(about)
        }
        (API_VERSION, "AppRegistration") => {
            let (label, about) = (label("AppRegistration"), about(Kind::AppRegistration));
            read_app(map, label).map_err(about)
        }
        ("v1", "Secret") => {
            let (label, about) = (label("Secret"), about(Kind::Secret));
            read_secret(map, label).map_err(about)
        }
        (API_VERSION, _) | ("v1", _) => Err(DocError {
            label: format!("kind {kind}"),
            object: None,
            field: Some("kind".to_owned()),
            message: format!(
                "unknown kind {kind:?} for apiVersion {api_version}: expected ApiPolicy or \
                 AppRegistration ({API_VERSION}) or Secret (v1)"
            ),
        }),
        _ => Err(DocError {
            label: format!("kind {kind}"),
            object: None,
            field: Some("apiVersion".to_owned()),
            message: format!(
                "unknown apiVersion {api_version:?}: expected {API_VERSION} (ApiPolicy, \
                 AppRegistration) or v1 (Secret)"
            ),
        }),
    }
}

fn read_policy(map: Map<String, Value>, label: String) -> Result<Document, DocError> {
    let doc: Resource<ApiPolicySpec> = typed(map, &label, false)?;
    let metadata = check_metadata(doc.metadata, &label)?;
    Ok(Document::ApiPolicy(Box::new(ApiPolicy {
        metadata,
        spec: doc.spec,
        status: None,
    })))
}

fn read_app(map: Map<String, Value>, label: String) -> Result<Document, DocError> {
    let doc: Resource<AppRegistrationSpec> = typed(map, &label, false)?;
    let metadata = check_metadata(doc.metadata, &label)?;
    Ok(Document::AppRegistration(Box::new(AppRegistration {
        metadata,
        spec: doc.spec,
        status: None,
    })))
}

fn read_secret(map: Map<String, Value>, label: String) -> Result<Document, DocError> {
    let doc: SecretDoc = typed(map, &label, true)?;
    let metadata = check_metadata(doc.metadata, &label)?;
    let data = secret_data(doc.data, doc.string_data, &label)?;
    Ok(Document::Secret(Box::new(Secret {
        metadata,
        data: Some(data),
        type_: doc.type_,
        immutable: doc.immutable,
        string_data: None,
    })))
}

/// The envelope of tollgate's own resources. `status` is accepted (so an
/// object exported with `kubectl get -o yaml` can be read back) and ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Resource<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: Map<String, Value>,
    spec: S,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

/// A `v1 Secret` as written in a file: `data` is base64, `stringData` is
/// plain text.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    /// The Secret's type (`Opaque`…); accepted and not interpreted.
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    immutable: Option<bool>,
}

/// The strict typed read, recording the field path of the first error.
/// For Secrets, messages about values under `data`/`stringData` are
/// replaced: serde quotes the offending value, which may be a credential.
fn typed<T: DeserializeOwned>(
    map: Map<String, Value>,
    label: &str,
    secret: bool,
) -> Result<T, DocError> {
    serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
        let field = e.path().to_string();
        let sensitive = secret
            && (field.starts_with("data.") || field.starts_with("stringData."))
            && !e.inner().to_string().starts_with("unknown field");
        let message = if sensitive {
            "invalid value: expected a string (the value is not shown)".to_owned()
        } else {
            e.inner().to_string()
        };
        DocError {
            label: label.to_owned(),
            field: (field != ".").then_some(field),
            object: None,
            message,
        }
    })
}

/// The `ObjectMeta` fields (Kubernetes API), so objects exported from a
/// cluster read back while a misspelt `namepsace` is still an error.
const METADATA_FIELDS: &[&str] = &[
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// Checks and reads `metadata`: known fields only, a valid `name`
/// (required) and `namespace` (default `default`).
fn check_metadata(map: Map<String, Value>, label: &str) -> Result<ObjectMeta, DocError> {
    let error = |field: String, message: String| DocError {
        label: label.to_owned(),
        object: None,
        field: Some(field),
        message,
    };
    if let Some(unknown) = map.keys().find(|k| !METADATA_FIELDS.contains(&k.as_str())) {
        return Err(error(
            format!("metadata.{unknown}"),
            "unknown field (expected a Kubernetes ObjectMeta field such as name, namespace, \
             labels or annotations)"
                .to_owned(),
        ));
    }
    let mut meta: ObjectMeta = serde_path_to_error::deserialize(Value::Object(map))
        .map_err(|e| error(format!("metadata.{}", e.path()), e.inner().to_string()))?;
    let Some(name) = meta.name.as_deref() else {
        return Err(error("metadata.name".to_owned(), "missing".to_owned()));
    };
    check_dns_subdomain(name).map_err(|m| error("metadata.name".to_owned(), m))?;
    match meta.namespace.as_deref() {
        None => meta.namespace = Some("default".to_owned()),
        Some(ns) => check_dns_label(ns).map_err(|m| error("metadata.namespace".to_owned(), m))?,
    }
    Ok(meta)
}

/// RFC 1123 subdomain, as Kubernetes requires of object names. Names end
/// up in `namespace/name` policy ids, so `/` must never appear.
fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} must be 1 to 253 characters"));
    }
    for label in name.split('.') {
        check_label_chars(label).map_err(|_| {
            format!(
                "{name:?} is not a valid name: lower-case letters, digits, '-' and '.', \
                 starting and ending with a letter or digit"
            )
        })?;
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes requires of namespaces.
fn check_dns_label(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err(format!("{name:?} must be at most 63 characters"));
    }
    check_label_chars(name).map_err(|_| {
        format!(
            "{name:?} is not a valid namespace: lower-case letters, digits and '-', starting \
             and ending with a letter or digit"
        )
    })
}

fn check_label_chars(label: &str) -> Result<(), ()> {
    let bytes = label.as_bytes();
    let ok_char = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let ends_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !bytes.is_empty()
        && bytes.iter().all(ok_char)
        && ends_ok(bytes.first())
        && ends_ok(bytes.last())
    {
        Ok(())
    } else {
        Err(())
    }
}

/// Decodes `data` (base64, RFC 4648 §4 with padding, as Kubernetes writes
/// it) and merges `stringData` over it, as the API server does. Key names
/// follow Kubernetes' rule (`[-._a-zA-Z0-9]+`).
fn secret_data(
    data: BTreeMap<String, String>,
    string_data: BTreeMap<String, String>,
    label: &str,
) -> Result<BTreeMap<String, ByteString>, DocError> {
    let error = |field: String, message: &str| DocError {
        label: label.to_owned(),
        object: None,
        field: Some(field),
        message: message.to_owned(),
    };
    let key_ok = |key: &str| {
        !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    let mut out = BTreeMap::new();
    for (key, encoded) in data {
        if !key_ok(&key) {
            return Err(error(
                format!("data.{key}"),
                "invalid key: use letters, digits, '-', '.' and '_'",
            ));
        }
        // Kubernetes tolerates no whitespace inside `data` values, but YAML
        // folded scalars may add a trailing newline; strip ASCII whitespace.
        let compact: String = encoded.split_ascii_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| {
                error(
                    format!("data.{key}"),
                    "invalid base64 (the value is not shown; use stringData for plain text)",
                )
            })?;
        out.insert(key, ByteString(bytes));
    }
    for (key, text) in string_data {
        if !key_ok(&key) {
            return Err(error(
                format!("stringData.{key}"),
                "invalid key: use letters, digits, '-', '.' and '_'",
            ));
        }
        out.insert(key, ByteString(text.into_bytes()));
    }
    Ok(out)
}

/// Duplicate `(kind, namespace, name)`: the second one names the first.
fn find_duplicates(docs: &[LoadedDocument]) -> Vec<DocumentError> {
    let mut seen: HashMap<(&str, &str, &str), &LoadedDocument> = HashMap::new();
    let mut errors = Vec::new();
    for doc in docs {
        let key = (
            doc.document.kind(),
            doc.document.namespace(),
            doc.document.name(),
        );
        if let Some(first) = seen.get(&key) {
            let Origin::File { path, index } = &doc.origin else {
                continue;
            };
            errors.push(DocumentError {
                file: path.clone(),
                document: Some((*index, format!("{} {}/{}", key.0, key.1, key.2))),
                field: Some("metadata.name".to_owned()),
                message: format!(
                    "duplicate {}: already defined in {}",
                    key.0,
                    first.describe()
                ),
            });
        } else {
            seen.insert(key, doc);
        }
    }
    errors
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests;
