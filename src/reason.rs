//! Every reason tollgate can deny a request for, with its one stable code,
//! HTTP status, gRPC code and title: the single table of the decision
//! contract (see `docs/decision-contract.md`).

use std::fmt;

/// gRPC status codes used in `CheckResponse.status` (google.rpc.Code values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    Ok = 0,
    InvalidArgument = 3,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Which `WWW-Authenticate` challenge a 401 carries: the one of the
/// credential that failed, so an OAuth client never discards a valid user
/// token because an app credential failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// RFC 6750 `Bearer`.
    Bearer,
    /// RFC 9449 §7.1 `DPoP`.
    Dpop,
    /// tollgate's `App` challenge naming the expected header.
    App,
    /// RFC 9421 `Signature` (no registered scheme; tollgate's own).
    Signature,
}

macro_rules! reasons {
    ($( $variant:ident => $code:literal, $http:literal, $grpc:ident, $challenge:expr, $title:literal; )*) => {
        /// A stable deny reason. The code strings are API: never rename one.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $variant, )*
        }

        impl Reason {
            /// Every reason, in table order.
            pub const ALL: &'static [Reason] = &[$( Reason::$variant, )*];

            /// The stable code sent in `x-tollgate-reason` and the problem body.
            pub fn code(self) -> &'static str {
                match self { $( Reason::$variant => $code, )* }
            }

            /// The HTTP status of the denied response.
            pub fn http_status(self) -> u16 {
                match self { $( Reason::$variant => $http, )* }
            }

            /// The gRPC code of the `CheckResponse.status`.
            pub fn grpc_code(self) -> GrpcCode {
                match self { $( Reason::$variant => GrpcCode::$grpc, )* }
            }

            /// The challenge a 401 carries, if any.
            pub fn challenge(self) -> Option<Challenge> {
                match self { $( Reason::$variant => $challenge, )* }
            }

            /// A short human title (the problem `title`).
            pub fn title(self) -> &'static str {
                match self { $( Reason::$variant => $title, )* }
            }

            /// Looks a reason up by its code.
            pub fn from_code(code: &str) -> Option<Reason> {
                match code { $( $code => Some(Reason::$variant), )* _ => None }
            }
        }
    };
}

use Challenge::{App, Bearer, Dpop, Signature};

reasons! {
    RequestMalformed => "request_malformed", 400, InvalidArgument, None, "Malformed request";
    UserTokenMissing => "user_token_missing", 401, Unauthenticated, Some(Bearer), "User token missing";
    UserTokenInvalid => "user_token_invalid", 401, Unauthenticated, Some(Bearer), "User token invalid";
    UserTokenExpired => "user_token_expired", 401, Unauthenticated, Some(Bearer), "User token expired";
    DpopProofMissing => "dpop_proof_missing", 401, Unauthenticated, Some(Dpop), "DPoP proof missing";
    DpopProofInvalid => "dpop_proof_invalid", 401, Unauthenticated, Some(Dpop), "DPoP proof invalid";
    CertificateBindingMismatch => "certificate_binding_mismatch", 401, Unauthenticated, Some(Bearer), "Certificate binding mismatch";
    AppCredentialMissing => "app_credential_missing", 401, Unauthenticated, Some(App), "App credential missing";
    AppUnknown => "app_unknown", 401, Unauthenticated, Some(App), "Unknown app";
    AttestationMissing => "attestation_missing", 401, Unauthenticated, Some(App), "App attestation missing";
    AttestationInvalid => "attestation_invalid", 401, Unauthenticated, Some(App), "App attestation invalid";
    AttestationExpired => "attestation_expired", 401, Unauthenticated, Some(App), "App attestation expired";
    TokenBindingMismatch => "token_binding_mismatch", 401, Unauthenticated, Some(App), "Token binding mismatch";
    SignatureMissing => "signature_missing", 401, Unauthenticated, Some(Signature), "Request signature missing";
    SignatureInvalid => "signature_invalid", 401, Unauthenticated, Some(Signature), "Request signature invalid";
    ReplayDetected => "replay_detected", 401, Unauthenticated, None, "Replay detected";
    NoPolicy => "no_policy", 403, PermissionDenied, None, "No policy for this request";
    HttpsRequired => "https_required", 403, PermissionDenied, None, "HTTPS required";
    IpDenied => "ip_denied", 403, PermissionDenied, None, "Client address denied";
    AppDisabled => "app_disabled", 403, PermissionDenied, None, "App disabled";
    AppNotAllowed => "app_not_allowed", 403, PermissionDenied, None, "App not allowed on this API";
    InsufficientScope => "insufficient_scope", 403, PermissionDenied, Some(Bearer), "Insufficient scope";
    RuleDenied => "rule_denied", 403, PermissionDenied, None, "Denied by rule";
    QuotaExceeded => "quota_exceeded", 429, ResourceExhausted, None, "Quota exceeded";
    StoreUnavailable => "store_unavailable", 503, Unavailable, None, "Store unavailable";
    KeysUnavailable => "keys_unavailable", 503, Unavailable, None, "Verification keys unavailable";
}

impl Reason {
    /// True for the app-attestation reasons a policy may hide from clients
    /// (`response.discloseReasons: false`).
    pub fn is_attestation_detail(self) -> bool {
        matches!(
            self,
            Reason::AttestationMissing
                | Reason::AttestationInvalid
                | Reason::AttestationExpired
                | Reason::TokenBindingMismatch
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            assert!(
                seen.insert(reason.code()),
                "duplicate code {}",
                reason.code()
            );
            assert_eq!(Reason::from_code(reason.code()), Some(*reason));
        }
    }

    #[test]
    fn http_and_grpc_agree_with_the_contract() {
        for reason in Reason::ALL {
            let expected = match reason.http_status() {
                400 => GrpcCode::InvalidArgument,
                401 => GrpcCode::Unauthenticated,
                403 => GrpcCode::PermissionDenied,
                429 => GrpcCode::ResourceExhausted,
                503 => GrpcCode::Unavailable,
                other => panic!("{reason} has unexpected status {other}"),
            };
            assert_eq!(reason.grpc_code(), expected, "{reason}");
        }
    }

    #[test]
    fn app_failures_never_use_the_bearer_challenge() {
        for reason in [
            Reason::AppCredentialMissing,
            Reason::AppUnknown,
            Reason::AttestationInvalid,
            Reason::TokenBindingMismatch,
        ] {
            assert_eq!(reason.challenge(), Some(Challenge::App));
        }
    }
}
