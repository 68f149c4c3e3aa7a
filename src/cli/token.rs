//! `tollgate token`: mint development keys and tokens, so a policy can be
//! tried without an IdP or an attestation service.
//!
//! ```text
//! tollgate token keygen --alg ES256 --kid dev-1 --out-dir ./keys      # key.pem + jwks.json
//! tollgate token user --key ./keys/key.pem --alg ES256 --kid dev-1 \
//!     --issuer https://id.example/ --audience bikes-api --subject alice --scope "read rent"
//! tollgate token app --secret "$(cat approov-secret.b64)" \
//!     --authorization "Bearer $USER_TOKEN" --device dev-42 --fractional-exp
//! ```
//!
//! Tokens go to stdout (one line), so they compose with shell variables.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::authn::mint::{self, AppClaims, SigningKey, UserClaims};
use crate::authn::{certificate, jwk};
use crate::policy::duration::parse_duration;

/// `tollgate token` arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// What to mint.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Generate a key pair: the private key (PEM) and a JWKS with its
    /// public key (for `jwks: { inline: … }`, a Secret, or a test IdP).
    Keygen(KeygenArgs),
    /// Mint a user access token (RFC 9068 claims, `typ: at+jwt`).
    User(UserArgs),
    /// Mint an Approov-style app attestation token (HMAC, base64 secret)
    /// with the `pay` binding to an Authorization value.
    App(AppArgs),
}

/// `tollgate token keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// ES256, RS256, PS256 or EdDSA.
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    /// The key id (`kid`) published in the JWKS.
    #[arg(long, default_value = "dev-1")]
    pub kid: String,
    /// Write `key.pem` and `jwks.json` here instead of printing JSON.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// `tollgate token user`.
#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// The private key (PEM) from `keygen`.
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, default_value = "ES256")]
    pub alg: String,
    #[arg(long, default_value = "dev-1")]
    pub kid: String,
    #[arg(long)]
    pub issuer: String,
    #[arg(long)]
    pub audience: String,
    #[arg(long)]
    pub subject: String,
    /// Lifetime, e.g. 5m, 1h.
    #[arg(long, default_value = "1h")]
    pub lifetime: String,
    /// Space-separated scopes.
    #[arg(long)]
    pub scope: Option<String>,
    /// Bind the token to this client certificate (PEM file): RFC 8705
    /// `cnf.x5t#S256`.
    #[arg(long)]
    pub bind_certificate: Option<PathBuf>,
    /// Bind the token to a DPoP key: `cnf.jkt` (RFC 9449).
    #[arg(long)]
    pub jkt: Option<String>,
}

/// `tollgate token app`.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// The attestation secret, base64 (Approov's format).
    #[arg(long, env = "TOLLGATE_APP_SECRET")]
    pub secret: String,
    /// HS256, HS384 or HS512.
    #[arg(long, default_value = "HS256")]
    pub alg: String,
    /// The `kid` header, when the policy's keys have ids.
    #[arg(long)]
    pub kid: Option<String>,
    /// The Authorization value (e.g. `Bearer eyJ…`) the `pay` claim binds.
    #[arg(long)]
    pub authorization: Option<String>,
    /// Further bound header values, in the policy's `binding.headers` order
    /// after the Authorization value.
    #[arg(long = "bind")]
    pub bind: Vec<String>,
    /// The device id (`did`).
    #[arg(long)]
    pub device: Option<String>,
    /// Lifetime, e.g. 5m.
    #[arg(long, default_value = "5m")]
    pub lifetime: String,
    /// Keep the fraction of a second in `exp`, as Approov does
    /// (`4708683205.891912`).
    #[arg(long)]
    pub fractional_exp: bool,
    /// Extra string claims, `name=value` (e.g. `app_id=commuter-ios`).
    #[arg(long = "claim")]
    pub claims: Vec<String>,
}

/// Runs `tollgate token`.
pub fn main(args: TokenArgs) -> ExitCode {
    match run(args) {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tollgate token: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Mints what `args` asks for; the text to print.
pub fn run(args: TokenArgs) -> anyhow::Result<String> {
    match args.command {
        TokenCommand::Keygen(args) => keygen(args),
        TokenCommand::User(args) => user(args),
        TokenCommand::App(args) => app(args),
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn lifetime(text: &str) -> anyhow::Result<f64> {
    parse_duration(text)
        .map(|d| d.as_secs_f64())
        .map_err(anyhow::Error::msg)
}

fn keygen(args: KeygenArgs) -> anyhow::Result<String> {
    let alg = mint::key_algorithm(&args.alg)?;
    let key = SigningKey::generate(alg, &args.kid)?;
    let jwks = mint::jwks([&key]);
    match args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key_path = dir.join("key.pem");
            write_private(&key_path, &key.private_pem())?;
            let jwks_path = dir.join("jwks.json");
            std::fs::write(&jwks_path, serde_json::to_string_pretty(&jwks)?)
                .with_context(|| format!("writing {}", jwks_path.display()))?;
            Ok(format!(
                "wrote {} (private) and {} (public JWKS)",
                key_path.display(),
                jwks_path.display()
            ))
        }
        None => Ok(serde_json::to_string_pretty(&json!({
            "privateKeyPem": key.private_pem(),
            "jwks": jwks,
        }))?),
    }
}

fn write_private(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    Ok(())
}

fn user(args: UserArgs) -> anyhow::Result<String> {
    let alg = mint::key_algorithm(&args.alg)?;
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let key = SigningKey::from_pem(alg, &args.kid, &pem)?;
    let cnf_x5t_s256 = match &args.bind_certificate {
        Some(path) => {
            let cert = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(certificate::thumbprint(&cert).context("the file holds no PEM certificate")?)
        }
        None => None,
    };
    let claims = UserClaims {
        issuer: args.issuer,
        audience: args.audience,
        subject: args.subject,
        now: now(),
        lifetime_secs: lifetime(&args.lifetime)?,
        scope: args.scope,
        cnf_x5t_s256,
        cnf_jkt: args.jkt,
    };
    Ok(key.sign(Some("at+jwt"), &claims.to_json())?)
}

fn app(args: AppArgs) -> anyhow::Result<String> {
    let alg = jwk::parse_algorithm(&args.alg).map_err(anyhow::Error::msg)?;
    if !jwk::is_symmetric(alg) {
        bail!("app tokens are minted with HS256/384/512 from a base64 secret");
    }
    let secret = base64::engine::general_purpose::STANDARD
        .decode(args.secret.trim())
        .context("--secret is not base64")?;
    let mut exp = now() + lifetime(&args.lifetime)?;
    if !args.fractional_exp {
        exp = exp.floor();
    }
    let mut extra = Map::new();
    for claim in &args.claims {
        let (name, value) = claim
            .split_once('=')
            .with_context(|| format!("--claim {claim:?} is not name=value"))?;
        extra.insert(name.to_owned(), Value::String(value.to_owned()));
    }
    let claims = AppClaims {
        exp,
        bound_values: args.authorization.into_iter().chain(args.bind).collect(),
        device: args.device,
        extra,
    };
    Ok(mint::sign_hmac(
        alg,
        &secret,
        args.kid.as_deref(),
        &claims.to_json(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_tokens_carry_pay_and_fractional_exp() {
        let token = run(TokenArgs {
            command: TokenCommand::App(AppArgs {
                secret: base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
                alg: "HS256".into(),
                kid: None,
                authorization: Some("Bearer abc".into()),
                bind: vec![],
                device: Some("d1".into()),
                lifetime: "5m".into(),
                fractional_exp: true,
                claims: vec!["app_id=commuter".into()],
            }),
        })
        .unwrap();
        let jwt = crate::authn::jwt::parse(&token).unwrap();
        assert_eq!(
            jwt.claims["pay"],
            "w1Xc6WwWEogNEZQP/dkBTThsJT4MNlKmzQanIm970rY="
        );
        assert_eq!(jwt.claims["did"], "d1");
        assert_eq!(jwt.claims["app_id"], "commuter");
        assert!(jwt.claims["exp"].is_f64());
    }

    #[test]
    fn keygen_then_user_token() {
        let dir = tempfile::tempdir().unwrap();
        run(TokenArgs {
            command: TokenCommand::Keygen(KeygenArgs {
                alg: "EdDSA".into(),
                kid: "k".into(),
                out_dir: Some(dir.path().to_owned()),
            }),
        })
        .unwrap();
        let token = run(TokenArgs {
            command: TokenCommand::User(UserArgs {
                key: dir.path().join("key.pem"),
                alg: "EdDSA".into(),
                kid: "k".into(),
                issuer: "https://id.example/".into(),
                audience: "api".into(),
                subject: "alice".into(),
                lifetime: "10m".into(),
                scope: Some("read".into()),
                bind_certificate: None,
                jkt: None,
            }),
        })
        .unwrap();
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("jwks.json")).unwrap())
                .unwrap();
        let set = crate::authn::jwk::KeySet::from_jwks(&jwks, false).unwrap();
        let jwt = crate::authn::jwt::parse(&token).unwrap();
        assert!(set.verify(&jwt, jsonwebtoken::Algorithm::EdDSA).is_some());
        assert_eq!(jwt.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(jwt.claims["scope"], "read");
    }
}
