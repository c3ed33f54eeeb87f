//! Turns call metadata into a [`CallerIdentity`] in one tower layer, before
//! any handler runs. Handlers never read headers: they ask [`caller`] for the
//! identity and the scope their RPC needs.

pub mod jwt;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::HeaderMap;
use tonic::Status;
use tower::{Layer, Service};

use uuid::Uuid;

pub use jwt::JwtVerifier;

use crate::error::Error;
use crate::observe::CallRecord;
use crate::store::{Store, TenantScope, now_micros};
use crate::tenant::{ALL_TENANTS, PLATFORM_TENANT, PartnerId, TenantId};
use crate::watch::CredentialCheck;

/// Metadata key naming the tenant a call acts for.
pub const TENANT_HEADER: &str = "x-tenant-id";
/// Metadata key carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The RPCs a platform credential may call with `x-tenant-id: *`: the
/// reads that span tenants. Everything else (`Append`, `Delete`, `Get`,
/// PolicyService, IntegrityService) acts on one tenant's log.
const ACROSS_TENANTS: &[&str] = &[
    "/audit.v1.AuditService/Query",
    "/audit.v1.AuditService/Stats",
    "/audit.v1.AuditService/GetFilterMetadata",
    "/audit.v1.AuditService/Export",
    "/audit.v1.AuditService/Watch",
];

/// The RPCs a platform credential may call on the platform's own log
/// (`x-tenant-id: _platform`): reads only; the service alone writes there.
const PLATFORM_LOG_READS: &[&str] = &[
    "/audit.v1.AuditService/Query",
    "/audit.v1.AuditService/Get",
    "/audit.v1.AuditService/Stats",
    "/audit.v1.AuditService/GetFilterMetadata",
    "/audit.v1.AuditService/Export",
    "/audit.v1.AuditService/Watch",
    "/audit.v1.IntegrityService/",
];

/// Path prefixes of the services that need a credential; reflection and
/// health stay open.
const PROTECTED_SERVICES: &[&str] = &[
    "/audit.v1.AuditService/",
    "/audit.v1.IntegrityService/",
    "/audit.v1.PolicyService/",
];

/// A permission a credential grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Query, Get, Stats, GetFilterMetadata, Watch, and IntegrityService.
    Read,
    /// Append.
    Append,
    /// Delete.
    Write,
    /// PolicyService: retention and legal holds of the tenant's log.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Append, Scope::Write, Scope::Admin];

    /// The scope's name in credentials (`audit:read`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "audit:read",
            Scope::Append => "audit:append",
            Scope::Write => "audit:write",
            Scope::Admin => "audit:admin",
        }
    }

    /// Parses a scope name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// A bearer JWT.
    Jwt,
    /// An API key minted with `audit-service keys create`.
    ApiKey,
}

/// Whom a verified credential acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// One tenant.
    Tenant(TenantId),
    /// A platform administrator: reads across tenants (only those of
    /// `partner` when set) and the platform's own log.
    Platform {
        /// The partner the credential is limited to.
        partner: Option<PartnerId>,
    },
}

/// What a call's `x-tenant-id` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantHeader {
    /// One tenant's log (`_platform`: the platform's own).
    Tenant(TenantId),
    /// `*`: every tenant a platform credential reaches.
    AllTenants,
}

/// Who is calling, for which tenant, with which scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The log the call acts on and the service records on its behalf in:
    /// the credential's tenant, equal to `x-tenant-id`; for a platform
    /// credential the reserved `_platform`.
    pub tenant: TenantId,
    /// The tenants the call reads: [`TenantScope::One`] of `tenant`, except
    /// for a platform credential sending `x-tenant-id: *`.
    pub tenants: TenantScope,
    /// Whom the credential acts for.
    pub principal: Principal,
    /// The JWT `sub`, or the API key id.
    pub subject: String,
    /// Scopes the credential grants.
    pub scopes: Vec<Scope>,
    /// How the caller authenticated.
    pub kind: CredentialKind,
    /// The JWT's `exp` (unix seconds); `None` for an API key.
    pub expires_at: Option<u64>,
    /// The API key's id; `None` for a JWT.
    pub api_key: Option<Uuid>,
}

impl CallerIdentity {
    /// Ok when the credential grants `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(Error::MissingScope(scope.as_str()))
        }
    }

    /// Who the caller is without its secret, for logs: `api_key:<id>` or
    /// `jwt:<sub>`.
    pub fn credential_id(&self) -> String {
        match (self.kind, self.api_key) {
            (CredentialKind::ApiKey, Some(id)) => format!("api_key:{id}"),
            _ => format!("jwt:{}", self.subject),
        }
    }

    /// The actor type the caller is recorded as in events the service writes
    /// on its behalf.
    pub fn actor_type(&self) -> crate::proto::ActorType {
        match self.kind {
            CredentialKind::ApiKey => crate::proto::ActorType::ApiKey,
            CredentialKind::Jwt => crate::proto::ActorType::User,
        }
    }
}

/// The caller of `request`, if it holds `scope`.
pub fn caller<T>(request: &tonic::Request<T>, scope: Scope) -> Result<CallerIdentity, Error> {
    let identity = request
        .extensions()
        .get::<CallerIdentity>()
        .ok_or_else(|| Error::Unauthenticated("no caller identity on the request".into()))?;
    identity.require(scope)?;
    Ok(identity.clone())
}

/// What a stream opened by `request` checks its credential with, for as
/// long as it lives.
pub fn stream_credential<T>(request: &tonic::Request<T>) -> Result<Arc<dyn CredentialCheck>, Error> {
    let credential = request
        .extensions()
        .get::<StreamCredential>()
        .ok_or_else(|| Error::Unauthenticated("no caller identity on the request".into()))?;
    Ok(Arc::new(credential.clone()))
}

/// What `x-tenant-id` names: a tenant, the platform's own log
/// (`_platform`), or every tenant (`*`).
pub fn tenant_from_headers(headers: &HeaderMap) -> Result<TenantHeader, Error> {
    let Some(value) = headers.get(TENANT_HEADER) else {
        return Err(Error::TenantRequired);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::invalid(TENANT_HEADER, "must be printable ASCII"))?;
    match value {
        _ if value.trim().is_empty() => Err(Error::TenantRequired),
        ALL_TENANTS => Ok(TenantHeader::AllTenants),
        PLATFORM_TENANT => Ok(TenantHeader::Tenant(TenantId::platform())),
        _ => TenantId::parse(value, TENANT_HEADER).map(TenantHeader::Tenant),
    }
}

/// The log a `principal` acts on and the tenants it reads when it sends
/// `header`: its own tenant's; for a platform credential the platform's
/// log (only when not limited to a partner, as that log names every
/// partner's tenants) or, with `*`, every tenant it reaches.
/// [`Error::TenantMismatch`] otherwise.
fn bind(principal: &Principal, header: TenantHeader) -> Result<(TenantId, TenantScope), Error> {
    match (principal, header) {
        (Principal::Tenant(own), TenantHeader::Tenant(named)) if *own == named => {
            Ok((named.clone(), TenantScope::One(named)))
        }
        (Principal::Platform { partner: None }, TenantHeader::Tenant(named)) if named.is_platform() => {
            Ok((named.clone(), TenantScope::One(named)))
        }
        (Principal::Platform { partner }, TenantHeader::AllTenants) => Ok((
            TenantId::platform(),
            TenantScope::Platform {
                partner: partner.clone(),
            },
        )),
        _ => Err(Error::TenantMismatch),
    }
}

/// Ok when `identity` may call the RPC at `path`: a platform credential
/// only reads, across tenants with the RPCs of [`ACROSS_TENANTS`] (holding
/// `audit:admin`), in the platform's log with those of
/// [`PLATFORM_LOG_READS`].
fn admit(path: &str, identity: &CallerIdentity) -> Result<(), Error> {
    if matches!(identity.principal, Principal::Tenant(_)) {
        return Ok(());
    }
    let listed = |rpcs: &[&str]| {
        rpcs.iter()
            .any(|rpc| path == *rpc || (rpc.ends_with('/') && path.starts_with(rpc)))
    };
    match &identity.tenants {
        TenantScope::Platform { .. } => {
            if !listed(ACROSS_TENANTS) {
                return Err(Error::PlatformReadOnly(format!(
                    "with x-tenant-id `*` a platform credential may call only the reads that span tenants \
                     ({}); {path} acts on one tenant's log",
                    ACROSS_TENANTS.join(", ")
                )));
            }
            identity.require(Scope::Admin)
        }
        TenantScope::One(_) if listed(PLATFORM_LOG_READS) => Ok(()),
        TenantScope::One(_) => Err(Error::PlatformReadOnly(format!(
            "the `{PLATFORM_TENANT}` log is written by the service only: a platform credential may read it, not call {path}"
        ))),
    }
}

/// Verifies the credentials of a call: a bearer JWT or an API key, whose
/// tenant must equal `x-tenant-id`.
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    store: Store,
    /// When each API key's `last_used_at` was last written, to write it at
    /// most once per [`LAST_USED_RESOLUTION`].
    touched: Mutex<HashMap<Uuid, Instant>>,
    /// The latest instant (unix microseconds) each API key was read from
    /// the database and found live, shared by the streams of that key.
    confirmed: Mutex<HashMap<Uuid, i64>>,
}

/// Keys whose last confirmation [`Authenticator`] remembers before it
/// forgets the stale ones.
const CONFIRMED_KEYS: usize = 4096;

/// Resolution of an API key's `last_used_at`.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(30);

/// What a verified credential says, before it is bound to `x-tenant-id`.
struct Verified {
    principal: Principal,
    subject: String,
    scopes: Vec<Scope>,
    kind: CredentialKind,
    expires_at: Option<u64>,
    api_key: Option<Uuid>,
}

/// The credential a call presents.
enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

impl Authenticator {
    /// Verifies tokens with `jwt` (bearer tokens are refused when `None`)
    /// and API keys against `store`.
    pub fn new(jwt: Option<JwtVerifier>, store: Store) -> Self {
        Self {
            jwt,
            store,
            touched: Mutex::new(HashMap::new()),
            confirmed: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that API key `id` is live at an instant no earlier than
    /// `after` (unix microseconds) and returns that instant: a database
    /// read, unless a stream of the same key already made one late enough.
    pub async fn confirm_api_key(&self, id: Uuid, after: i64) -> Result<i64, Error> {
        if let Some(at) = self.confirmed().get(&id).copied()
            && at >= after
        {
            return Ok(at);
        }
        let at = now_micros();
        if !self.store.api_key_is_live(id).await? {
            self.confirmed().remove(&id);
            return Err(Error::Unauthenticated("the API key was revoked".into()));
        }
        let mut cache = self.confirmed();
        if cache.len() >= CONFIRMED_KEYS {
            let stale = at - 60 * 1_000_000;
            cache.retain(|_, seen| *seen > stale);
        }
        let seen = cache.entry(id).or_insert(at);
        *seen = (*seen).max(at);
        Ok(at)
    }

    /// The identity of a call of the RPC at `path` carrying `headers`.
    pub async fn authenticate(&self, path: &str, headers: &HeaderMap) -> Result<CallerIdentity, Error> {
        let header = tenant_from_headers(headers)?;
        let verified = match credential(headers)? {
            Credential::Bearer(token) => {
                let jwt = self.jwt.as_ref().ok_or_else(|| {
                    Error::Unauthenticated(
                        "bearer tokens are not accepted: the server has no AUDIT_JWT_SECRET or AUDIT_JWT_PUBLIC_KEY_FILE"
                            .into(),
                    )
                })?;
                let token = jwt.verify(token)?;
                let principal = match token.holder {
                    jwt::TokenHolder::Tenant(tenant) => {
                        Principal::Tenant(TenantId::parse(&tenant, "tenant_id").map_err(|_| {
                            Error::Unauthenticated("bearer token has a malformed tenant_id".into())
                        })?)
                    }
                    jwt::TokenHolder::Platform { partner } => Principal::Platform {
                        partner: partner
                            .map(|p| PartnerId::parse(&p, "partner_id"))
                            .transpose()
                            .map_err(|_| {
                                Error::Unauthenticated("bearer token has a malformed partner_id".into())
                            })?,
                    },
                };
                Verified {
                    principal,
                    subject: token.subject,
                    scopes: scopes(&token.scopes),
                    kind: CredentialKind::Jwt,
                    expires_at: Some(token.expires_at),
                    api_key: None,
                }
            }
            Credential::ApiKey(key) => {
                let key =
                    self.store.verify_api_key(key).await?.ok_or_else(|| {
                        Error::Unauthenticated("API key is unknown, wrong or revoked".into())
                    })?;
                self.touch(key.id);
                let principal =
                    if key.platform {
                        Principal::Platform {
                            partner: key.partner.clone(),
                        }
                    } else {
                        Principal::Tenant(TenantId::parse(&key.tenant, "tenant_id").map_err(|_| {
                            Error::Internal(format!("API key {} has a malformed tenant", key.id))
                        })?)
                    };
                Verified {
                    principal,
                    subject: key.id.to_string(),
                    scopes: scopes(&key.scopes),
                    kind: CredentialKind::ApiKey,
                    expires_at: None,
                    api_key: Some(key.id),
                }
            }
        };
        let (tenant, tenants) = bind(&verified.principal, header)?;
        let identity = CallerIdentity {
            tenant,
            tenants,
            principal: verified.principal,
            subject: verified.subject,
            scopes: verified.scopes,
            kind: verified.kind,
            expires_at: verified.expires_at,
            api_key: verified.api_key,
        };
        admit(path, &identity)?;
        Ok(identity)
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, i64>> {
        self.confirmed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the key's use in the background, at most once per resolution.
    fn touch(&self, id: Uuid) {
        let now = Instant::now();
        {
            let mut touched = self
                .touched
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if touched
                .get(&id)
                .is_some_and(|last| now.duration_since(*last) < LAST_USED_RESOLUTION)
            {
                return;
            }
            touched.insert(id, now);
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.touch_api_key(id).await {
                tracing::warn!(%error, key = %id, "could not record API key use");
            }
        });
    }
}

fn scopes(names: &[String]) -> Vec<Scope> {
    names.iter().filter_map(|name| Scope::parse(name)).collect()
}

/// Why a call's credential was refused, as `audit_auth_failures_total`'s
/// `reason` label: a handful of fixed values.
fn failure_reason(headers: &HeaderMap, error: &Error) -> &'static str {
    match error {
        Error::TenantRequired => "tenant_missing",
        Error::InvalidArgument(_) => "tenant_malformed",
        Error::TenantMismatch => "tenant_mismatch",
        Error::PlatformReadOnly(_) => "platform_read_only",
        Error::MissingScope(_) => "scope_missing",
        Error::Unauthenticated(_) => match credential(headers) {
            Ok(Credential::Bearer(_)) => "bearer_token_refused",
            Ok(Credential::ApiKey(_)) => "api_key_refused",
            Err(_) if headers.contains_key("authorization") || headers.contains_key(API_KEY_HEADER) => {
                "credential_malformed"
            }
            Err(_) => "credential_missing",
        },
        _ => "unavailable",
    }
}

/// The one credential in `headers`.
fn credential(headers: &HeaderMap) -> Result<Credential<'_>, Error> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Error::Unauthenticated(format!("{name} is not printable ASCII")))
            })
            .transpose()
    };
    let bearer = match text("authorization")? {
        Some(value) => {
            let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(Error::Unauthenticated(
                    "authorization must be `Bearer <JWT>`".into(),
                ));
            }
            Some(token.trim())
        }
        None => None,
    };
    match (bearer, text(API_KEY_HEADER)?) {
        (Some(token), None) => Ok(Credential::Bearer(token)),
        (None, Some(key)) => Ok(Credential::ApiKey(key.trim())),
        (Some(_), Some(_)) => Err(Error::Unauthenticated(
            "send one credential, not both a bearer token and an API key".into(),
        )),
        (None, None) => Err(Error::Unauthenticated(
            "a credential is required: `authorization: Bearer <JWT>` or `x-api-key: <key>`".into(),
        )),
    }
}

/// Tower layer that authenticates every call to a protected service.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer verifying with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let path = request.uri().path();
            if PROTECTED_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
                // Before the credential is read: what it says holds from then.
                let verified_at = now_micros();
                let record = CallRecord::in_extensions(request.extensions());
                match authenticator.authenticate(path, request.headers()).await {
                    Ok(identity) => {
                        record.identified(identity.tenant.as_str(), identity.credential_id());
                        let credential = StreamCredential::new(authenticator.clone(), &identity, verified_at);
                        request.extensions_mut().insert(credential);
                        request.extensions_mut().insert(identity);
                    }
                    Err(error) => {
                        record.auth_failed(failure_reason(request.headers(), &error));
                        return Ok(Status::from(error).into_http());
                    }
                }
            }
            inner.call(request).await
        })
    }
}

/// A call's credential as a stream re-checks it: an API key is read again
/// from the database (a revocation ends the stream), a JWT lapses when
/// verification would refuse it (`exp` plus [`jwt::LEEWAY_SECS`]).
#[derive(Clone)]
pub struct StreamCredential {
    authenticator: Arc<Authenticator>,
    api_key: Option<Uuid>,
    lapses_at: Option<SystemTime>,
    verified_at: i64,
}

impl StreamCredential {
    /// The credential `identity` was authenticated with at `verified_at`
    /// (unix microseconds).
    pub fn new(authenticator: Arc<Authenticator>, identity: &CallerIdentity, verified_at: i64) -> Self {
        Self {
            authenticator,
            api_key: identity.api_key,
            lapses_at: identity.expires_at.map(jwt::lapses_at),
            verified_at,
        }
    }
}

impl CredentialCheck for StreamCredential {
    fn verified_at(&self) -> i64 {
        self.verified_at
    }

    fn lapses_at(&self) -> Option<SystemTime> {
        self.lapses_at
    }

    fn confirm(&self, after: i64) -> BoxFuture<'_, Result<i64, Error>> {
        async move {
            if let Some(lapses_at) = self.lapses_at
                && SystemTime::now() >= lapses_at
            {
                return Err(Error::Unauthenticated("the bearer token expired".into()));
            }
            match self.api_key {
                Some(id) => self.authenticator.confirm_api_key(id, after).await,
                None => Ok(now_micros()),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwtConfig;

    const SECRET: &str = "unit-test-secret-0123456789abcdef";

    fn token_with_exp(exp: i64) -> String {
        let claims = serde_json::json!({ "sub": "s", "tenant_id": "t", "exp": exp });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("sign")
    }

    /// A stream's JWT lapses exactly when verification starts refusing it.
    #[test]
    fn a_token_lapses_when_verification_with_the_leeway_refuses_it() {
        let config = JwtConfig {
            secret: Some(SECRET.into()),
            ..Default::default()
        };
        let verifier = JwtVerifier::from_config(&config)
            .expect("config")
            .expect("a verifier");
        let unix_now = || {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs();
            i64::try_from(secs).expect("unix seconds fit i64")
        };
        let leeway = i64::try_from(jwt::LEEWAY_SECS).expect("leeway fits i64");
        // Retried when a second boundary falls between the checks.
        for _ in 0..3 {
            let now = unix_now();
            let still = now - leeway;
            let lapsed = still - 1;
            let accepted = verifier.verify(&token_with_exp(still));
            let refused = verifier.verify(&token_with_exp(lapsed));
            if unix_now() != now {
                continue;
            }
            let token = accepted.expect("within the leeway");
            assert_eq!(i64::try_from(token.expires_at), Ok(still));
            assert!(jwt::lapses_at(token.expires_at) > std::time::SystemTime::now());
            assert!(refused.is_err());
            let lapsed = u64::try_from(lapsed).expect("after 1970");
            assert!(jwt::lapses_at(lapsed) <= std::time::SystemTime::now());
            return;
        }
        panic!("the clock kept crossing second boundaries");
    }
}
