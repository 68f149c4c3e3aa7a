//! Durations written the Kubernetes way in policies: `500ms`, `30s`, `5m`,
//! `1h`, `1d`, or a combination such as `1m30s`.

use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from a policy string; keeps the original text so a
/// policy serialises back as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationStr {
    text: String,
    value: Duration,
}

impl DurationStr {
    /// The parsed duration.
    pub fn get(&self) -> Duration {
        self.value
    }

    /// Parses `text`; see the module docs for the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_duration(text).map(|value| Self {
            text: text.to_owned(),
            value,
        })
    }
}

impl fmt::Display for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses `1h30m`, `500ms`, `10s`, `1d`. Rejects empty, unitless and
/// overflowing values, and anything longer than
/// [`super::bounds::MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: expected e.g. 500ms, 30s, 5m, 1h, 1d");
    if text.is_empty() || text.len() > 32 {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(invalid)?),
            "h" => Duration::from_secs(number.checked_mul(3600).ok_or_else(invalid)?),
            "d" => Duration::from_secs(number.checked_mul(86_400).ok_or_else(invalid)?),
            _ => return Err(invalid()),
        };
        total = total.checked_add(part).ok_or_else(invalid)?;
    }
    if total > super::bounds::MAX_DURATION {
        return Err(format!(
            "invalid duration {text:?}: longer than ten years, which no setting needs"
        ));
    }
    Ok(total)
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DurationStr::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationStr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration such as 500ms, 30s, 5m, 1h or 1d."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-5s",
            "5 s",
            "1.5s",
            "99999999999999999999s",
            "18446744073709551615s",
            "3651d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
