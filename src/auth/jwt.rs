//! Bearer JWT verification with `jsonwebtoken`: HS256 with the operator's
//! secret, RS256 or ES256 with the operator's PEM public key. The algorithm
//! a token names must be one the configured keys are for, and each
//! algorithm is checked only with its own key, so `alg: none` and HS/RS
//! confusion are refused.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::config::JwtConfig;
use crate::error::Error;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Longest accepted `sub`: a token's subject becomes the actor id of the
/// events the service writes for its caller, and actor ids are capped at
/// 512 bytes.
pub const MAX_SUBJECT_BYTES: usize = 512;

/// The claims the service reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Required unless `platform` is true; then absent or `*`.
    #[serde(default)]
    tenant_id: Option<String>,
    /// `true` on a platform administrator's token (any other type is a
    /// malformed token).
    #[serde(default)]
    platform: bool,
    /// On a platform token: the partner whose tenants it is limited to.
    #[serde(default)]
    partner_id: Option<String>,
    #[serde(default)]
    scope: String,
    /// Checked by `jsonwebtoken` (required, a whole number of seconds);
    /// read here only to know when the token lapses.
    #[serde(default)]
    exp: Option<serde_json::Value>,
}

/// Whom a verified token acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenHolder {
    /// `tenant_id`, as the token spells it.
    Tenant(String),
    /// `platform: true`: reads across tenants, limited to the tenants of
    /// `partner_id` when it is set.
    Platform {
        /// `partner_id`, as the token spells it.
        partner: Option<String>,
    },
}

/// A verified token's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`.
    pub subject: String,
    /// `tenant_id`, or the platform.
    pub holder: TokenHolder,
    /// `scope`, split on spaces.
    pub scopes: Vec<String>,
    /// `exp`, unix seconds; the token verifies until `exp + LEEWAY_SECS`
    /// has passed ([`lapses_at`]).
    pub expires_at: u64,
}

/// The first instant at which a token with `exp` no longer verifies:
/// `jsonwebtoken` refuses it once `exp + LEEWAY_SECS` is less than the
/// current unix second.
pub fn lapses_at(exp: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp.saturating_add(LEEWAY_SECS).saturating_add(1))
}

/// Checks bearer tokens against the configured keys.
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    key_id: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.secret.is_some())
            .field("public_key", &self.public.as_ref().map(|(alg, _)| *alg))
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier for the configured keys; `None` when no key is configured
    /// (bearer tokens are then refused).
    pub fn from_config(config: &JwtConfig) -> anyhow::Result<Option<Self>> {
        let secret = match config.secret.as_deref() {
            Some("") | None => None,
            Some(secret) => Some(DecodingKey::from_secret(secret.as_bytes())),
        };
        let public = match &config.public_key_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("cannot read AUDIT_JWT_PUBLIC_KEY_FILE {}: {e}", path.display())
                })?;
                Some(public_key(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
            }
        };
        if secret.is_none() && public.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            secret,
            public,
            key_id: config.key_id.clone().filter(|k| !k.is_empty()),
            issuer: config.issuer.clone().filter(|s| !s.is_empty()),
            audience: config.audience.clone().filter(|s| !s.is_empty()),
        }))
    }

    /// The identity in `token`, if it verifies.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, Error> {
        let refuse = |why: &str| Error::Unauthenticated(format!("bearer token refused: {why}"));
        let header = decode_header(token).map_err(|_| refuse("not a signed JWT with a supported alg"))?;
        if let Some(kid) = &header.kid
            && self.key_id.as_ref() != Some(kid)
        {
            return Err(refuse("unknown kid"));
        }
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|(public_alg, _)| *public_alg == alg)
                .map(|(_, key)| key),
        }
        .ok_or_else(|| refuse(&format!("alg {:?} is not accepted by this server", header.alg)))?;

        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let claims = decode::<Claims>(token, key, &validation)
            .map_err(|error| {
                if let ErrorKind::MissingRequiredClaim(claim) = error.kind()
                    && has_claim(token, claim)
                {
                    // jsonwebtoken reads a NumericDate it cannot hold in
                    // whole seconds (1e20, 1.5e300) as a missing claim.
                    return refuse(&format!(
                        "{claim} is not a NumericDate in range (whole seconds since 1970)"
                    ));
                }
                refuse(match error.kind() {
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidIssuer => "wrong iss",
                    ErrorKind::InvalidAudience => "wrong aud",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "a required claim (exp, sub, or the configured iss/aud) is missing"
                    }
                    ErrorKind::InvalidAlgorithm => "alg mismatch",
                    _ => "malformed token or claims (sub, tenant_id, platform, partner_id, scope, exp)",
                })
            })?
            .claims;
        check_subject(&claims.sub).map_err(|why| refuse(&format!("sub {why}")))?;
        let expires_at = claims
            .exp
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| refuse("exp is not a whole number of seconds"))?;
        let holder = match (claims.platform, claims.tenant_id) {
            (true, None) => TokenHolder::Platform {
                partner: claims.partner_id,
            },
            (true, Some(tenant)) if tenant == crate::tenant::ALL_TENANTS => TokenHolder::Platform {
                partner: claims.partner_id,
            },
            (true, Some(_)) => {
                return Err(refuse("a platform token names no tenant_id, or `*`"));
            }
            (false, Some(tenant)) if tenant == crate::tenant::ALL_TENANTS => {
                return Err(refuse("tenant_id `*` needs the claim `platform: true`"));
            }
            (false, Some(_)) if claims.partner_id.is_some() => {
                return Err(refuse("partner_id is a claim of platform tokens only"));
            }
            (false, Some(tenant)) => TokenHolder::Tenant(tenant),
            (false, None) => return Err(refuse("tenant_id is required (or `platform: true`)")),
        };
        Ok(VerifiedToken {
            subject: claims.sub,
            holder,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            expires_at,
        })
    }
}

/// Whether the (signature-checked) `token`'s payload has `claim` at all.
fn has_claim(token: &str, claim: &str) -> bool {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json).ok())
        .is_some_and(|claims| claims.contains_key(claim))
}

/// Ok when `sub` can stand as an actor id: not empty, at most
/// [`MAX_SUBJECT_BYTES`], no control characters (a NUL cannot even be
/// stored on PostgreSQL).
pub fn check_subject(sub: &str) -> Result<(), String> {
    if sub.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if sub.len() > MAX_SUBJECT_BYTES {
        return Err(format!(
            "must be at most {MAX_SUBJECT_BYTES} bytes, got {}",
            sub.len()
        ));
    }
    if sub.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// An RS256 (RSA) or ES256 (EC P-256) verification key from PEM.
fn public_key(pem: &[u8]) -> anyhow::Result<(Algorithm, DecodingKey)> {
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((Algorithm::ES256, key));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, key));
    }
    anyhow::bail!("not an RSA or EC P-256 public key in PEM")
}
