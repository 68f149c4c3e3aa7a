//! What operators need to know about a serving certificate: its serial
//! (to tell which one a listener serves after a rotation) and its validity
//! (logged at load, and exported as
//! `tollgate_tls_certificate_expiry_timestamp_seconds{listener}` so an
//! alert fires when cert-manager stops renewing).
//!
//! The certificate is parsed by webpki (the same parser rustls uses); only
//! the validity dates, which webpki keeps to itself, are read here with a
//! few lines of DER (RFC 5280 §4.1: `Certificate` → `tbsCertificate` →
//! `validity`). Nothing here decides whether a certificate is trusted.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use rustls::pki_types::CertificateDer;

use super::Role;

/// DER tags read on the way to the validity (X.690 §8.1.2).
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version` of `tbsCertificate`.
const VERSION: u8 = 0xA0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The leaf certificate of a chain, as logs and metrics describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The serial number in upper-case hex without leading zero bytes, as
    /// `openssl x509 -noout -serial` prints it.
    pub serial: String,
    /// Start of validity, when the dates could be read.
    pub not_before: Option<Timestamp>,
    /// End of validity, when the dates could be read.
    pub not_after: Option<Timestamp>,
}

impl Leaf {
    /// Parses `der`; an error says why it is not an X.509 certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let cert = webpki::EndEntityCert::try_from(der).map_err(|e| format!("{e:?}"))?;
        let validity = validity(der.as_ref());
        Ok(Self {
            serial: serial_hex(cert.serial()),
            not_before: validity.map(|(from, _)| from),
            not_after: validity.map(|(_, until)| until),
        })
    }

    /// Logs a warning when the certificate is expired or not yet valid:
    /// it is still served (refusing to start would not bring a valid one
    /// sooner), but every client that checks it will refuse it.
    pub fn warn_if_not_current(&self, role: Role) {
        let now = Timestamp::now();
        let expired = self.not_after.is_some_and(|until| until < now);
        let early = self.not_before.is_some_and(|from| from > now);
        if expired || early {
            tracing::warn!(
                listener = role.label(),
                serial = %self.serial,
                not_before = ?self.not_before.map(|t| t.to_string()),
                not_after = ?self.not_after.map(|t| t.to_string()),
                "the TLS certificate is not valid now; clients will refuse it"
            );
        }
    }

    /// Sets the expiry gauge of `role`'s listener.
    pub fn record_expiry(&self, role: Role) {
        if let Some(until) = self.not_after {
            metrics::gauge!(
                super::CERTIFICATE_EXPIRY,
                "listener" => role.label()
            )
            .set(until.as_second() as f64);
        }
    }
}

/// Upper-case hex without the sign-padding zero bytes (at least one byte).
fn serial_hex(bytes: &[u8]) -> String {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    bytes[first..].iter().map(|b| format!("{b:02X}")).collect()
}

/// One DER element of `input`: (tag, contents, what follows). Definite
/// lengths up to four bytes, as certificates use.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (digits, rest) = rest.split_at(count);
        let length = digits
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (length, rest)
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

/// The element of `input` if it has `tag`, and what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, contents, rest) = element(input)?;
    (found == tag).then_some((contents, rest))
}

/// RFC 5280 §4.1.2.5: (notBefore, notAfter).
fn validity(der: &[u8]) -> Option<(Timestamp, Timestamp)> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(certificate, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((VERSION, _, after)) = element(rest) {
        rest = after;
    }
    // serialNumber, signature, issuer
    for tag in [INTEGER, SEQUENCE, SEQUENCE] {
        rest = expect(rest, tag)?.1;
    }
    let (validity, _) = expect(rest, SEQUENCE)?;
    let (tag, not_before, rest) = element(validity)?;
    let from = time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    Some((from, time(tag, not_after)?))
}

/// `UTCTime` (`YYMMDDHHMMSSZ`, years 1950–2049 per RFC 5280
/// §4.1.2.5.1) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, contents: &[u8]) -> Option<Timestamp> {
    let digits = std::str::from_utf8(contents).ok()?.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i16 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let two = |at: usize| rest[at..at + 2].parse::<i8>().ok();
    let civil =
        jiff::civil::DateTime::new(year, two(0)?, two(2)?, two(4)?, two(6)?, two(8)?, 0).ok()?;
    TimeZone::UTC.to_timestamp(civil).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_drops_sign_padding_only() {
        assert_eq!(serial_hex(&[0x00, 0x8f, 0x01]), "8F01");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(serial_hex(&[0x00]), "00");
    }

    #[test]
    fn both_time_forms_and_rfc5280_century() {
        let utc = time(UTC_TIME, b"491231235959Z").unwrap();
        assert_eq!(utc.to_string(), "2049-12-31T23:59:59Z");
        let old = time(UTC_TIME, b"500101000000Z").unwrap();
        assert_eq!(old.to_string(), "1950-01-01T00:00:00Z");
        let generalized = time(GENERALIZED_TIME, b"20500101000000Z").unwrap();
        assert_eq!(generalized.to_string(), "2050-01-01T00:00:00Z");
        assert_eq!(time(UTC_TIME, b"491231235959"), None, "Z is required");
        assert_eq!(time(UTC_TIME, b"4912312359+0Z"), None);
        assert_eq!(time(GENERALIZED_TIME, b"491231235959Z"), None);
        assert_eq!(time(UTC_TIME, b"491331235959Z"), None, "month 13");
    }

    #[test]
    fn truncated_der_reads_as_nothing() {
        assert_eq!(element(&[]), None);
        assert_eq!(element(&[SEQUENCE, 0x05, 1, 2]), None);
        assert_eq!(element(&[SEQUENCE, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(
            element(&[SEQUENCE, 0x81, 0x02, 7, 8, 9]),
            Some((SEQUENCE, &[7u8, 8][..], &[9u8][..]))
        );
        assert_eq!(validity(&[SEQUENCE, 0x00]), None);
    }
}
