//! Authentication: who the user is ([`user`]) and which genuine app is
//! calling ([`app`]).
//!
//! - [`jwt`] — compact JWS parsing and claim checks (fractional dates);
//! - [`jwk`] — keys, the algorithm allow-list, signature checks;
//! - [`keys`] — key sources: inline, Secret, JWKS URL, OIDC discovery,
//!   with background refresh and the unknown-`kid` refetch;
//! - [`token_cache`] — verified user tokens, keyed by their SHA-256;
//! - [`user`] — OAuth 2.0 / OIDC access tokens, RFC 8705 binding;
//! - [`app`] — app identification and authentication;
//! - [`registry`] — registered apps: one compiled per `AppRegistration`,
//!   and the index the request path looks them up in;
//! - [`api_key`] — API keys, by digest only;
//! - [`attestation`] — Approov-style app tokens and the `pay` binding;
//! - [`dpop`] — DPoP proofs of possession for user tokens (RFC 9449);
//! - [`certificate`] — client certificate thumbprints and fingerprints;
//! - [`signature`] — signed requests (RFC 9421) and `Content-Digest`;
//! - [`scope`] — per-route scope and claim requirements;
//! - [`mint`] — development keys and tokens (`tollgate token`, tests).

pub mod api_key;
pub mod app;
pub mod attestation;
pub mod certificate;
pub mod dpop;
pub mod jwk;
pub mod jwt;
pub mod keys;
pub mod mint;
pub mod registry;
pub mod scope;
pub mod signature;
pub mod token_cache;
pub mod user;
