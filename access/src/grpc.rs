//! The gRPC gate: one tower layer in front of all of a server's services.
//!
//! For each call it reads the bearer token (`authorization: Bearer ...`),
//! verifies it against the key ring, and checks that it carries a scope of
//! the operation the method needs ([`Need`], from the server's table of
//! methods). A missing or invalid token is UNAUTHENTICATED; a valid one
//! without such a scope is PERMISSION_DENIED. The caller rides on with the
//! request ([`Caller`] in its extensions), so that a method whose
//! collection is only known once its message is read narrows the check
//! with [`require`]: the gate checks `write` on some collection, `require`
//! checks `write:photos`.
//!
//! Without a gate configured (tokens not required), every caller is
//! [`Caller::Anyone`]; a request that reached a method without passing the
//! layer at all is refused by [`require`] (fail closed).
//!
//! Why one file of ~700 lines: the gate is one tower layer: authentication,
//! scopes, revocations, quotas and the audit record are steps of one
//! request's path and share its state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;

use crate::SharedKeyring;
use crate::audit::{AuditLog, AuditReads, Event};
use crate::limits::RateLimits;
use crate::token::{Op, Principal, TokenError};

/// What a method asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No token (who a node is and whom it follows: what a health check or
    /// a joining node asks before it has a token).
    Open,
    /// Any valid token.
    Token,
    /// A scope of this operation (on some collection; the method narrows
    /// it with [`require`] where the collection matters).
    Scope(Op),
}

/// Who is calling, as the gate found.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Tokens are not required here.
    Anyone,
    /// The holder of a valid token.
    Token(Arc<Principal>),
}

/// The ids of revoked tokens (the cluster's deny list), as this server last
/// heard it: from the replicated state on a directory node, from heartbeat
/// answers on a volume server.
#[derive(Debug, Default)]
pub struct Revoked(parking_lot::RwLock<Arc<std::collections::HashSet<String>>>);

impl Revoked {
    /// Replaces the list; whether it changed.
    pub fn set(&self, ids: impl IntoIterator<Item = String>) -> bool {
        let ids: std::collections::HashSet<String> = ids.into_iter().collect();
        if **self.0.read() == ids {
            return false;
        }
        *self.0.write() = Arc::new(ids);
        true
    }

    /// The revoked ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.0.read().iter().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `token_id` is revoked.
    pub fn contains(&self, token_id: &str) -> bool {
        self.0.read().contains(token_id)
    }
}

/// A server's side of gRPC access control: the credential it presents to
/// the others, and the gate in front of its own services.
#[derive(Debug)]
pub struct ServerAuth {
    /// Its own token (scope `cluster`), when it has a key ring.
    pub credential: hayloft_proto::Credential,
    /// The gate, when tokens are required.
    pub gate: Option<Arc<Gate>>,
}

impl ServerAuth {
    /// For the server called `subject` with `keyring`: it presents a
    /// cluster token whenever it has a ring, and checks tokens (allowing
    /// `skew`, with its table of methods `rules`, refusing the ids in
    /// `revoked`) if `require_tokens`.
    pub fn new(
        keyring: Option<&Arc<SharedKeyring>>,
        subject: &str,
        require_tokens: bool,
        skew: Duration,
        rules: fn(&str) -> Need,
        revoked: Arc<Revoked>,
    ) -> ServerAuth {
        let Some(keyring) = keyring else {
            return ServerAuth {
                credential: hayloft_proto::Credential::none(),
                gate: None,
            };
        };
        let token = Arc::new(crate::token::ClusterToken::new(
            Arc::clone(keyring),
            subject,
        ));
        ServerAuth {
            credential: hayloft_proto::Credential::from_fn(move || token.current()),
            gate: require_tokens.then(|| {
                Arc::new(Gate {
                    keyring: Arc::clone(keyring),
                    skew,
                    rules,
                    revoked,
                })
            }),
        }
    }
}

/// Checks tokens against a key ring and a server's table of methods.
pub struct Gate {
    keyring: Arc<SharedKeyring>,
    skew: Duration,
    rules: fn(&str) -> Need,
    revoked: Arc<Revoked>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("keyring", &self.keyring.path())
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// The caller of `path` with `headers`, or the refusal.
    ///
    /// # Errors
    /// UNAUTHENTICATED (no token, or not a valid one) or PERMISSION_DENIED.
    pub fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let need = (self.rules)(path);
        if need == Need::Open {
            return Ok(Caller::Anyone);
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this cluster requires a token: set HAYLOFT_TOKEN (hayloft token create)",
                )
            })?
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be 'Bearer <token>'"))?;
        let now = hayloft_proto::unix_now();
        let principal = crate::token::verify(&self.keyring.get(), token.trim(), now, self.skew)
            .map_err(|e| {
                metrics::counter!("hayloft_grpc_denied_total", "reason" => denial(&e)).increment(1);
                Status::unauthenticated(e.to_string())
            })?;
        if self.revoked.contains(&principal.token_id) {
            metrics::counter!("hayloft_grpc_denied_total", "reason" => "revoked").increment(1);
            return Err(Status::unauthenticated(TokenError::Revoked.to_string()));
        }
        match need {
            Need::Open | Need::Token => Ok(Caller::Token(Arc::new(principal))),
            Need::Scope(op) if principal.allows_some(op) => Ok(Caller::Token(Arc::new(principal))),
            Need::Scope(op) => {
                metrics::counter!("hayloft_grpc_denied_total", "reason" => "scope").increment(1);
                Err(Status::permission_denied(format!(
                    "token {} ({}) has no {} scope for {path}",
                    principal.token_id,
                    principal.subject,
                    scope_name(op)
                )))
            }
        }
    }
}

fn denial(error: &TokenError) -> &'static str {
    match error {
        TokenError::Expired => "expired",
        TokenError::Revoked => "revoked",
        _ => "invalid",
    }
}

fn scope_name(op: Op) -> String {
    match op {
        Op::Admin | Op::Cluster => op.name().to_owned(),
        _ => format!("{}:<collection>", op.name()),
    }
}

/// Checks that the caller of a request may do `op` on `collection`.
///
/// # Errors
/// PERMISSION_DENIED, or INTERNAL for a request that never passed a gate.
pub fn require(extensions: &http::Extensions, op: Op, collection: &str) -> Result<(), Status> {
    Caller::require(extensions.get::<Caller>(), op, collection)?;
    Quota::charge_to(extensions.get::<Quota>(), op, collection)
}

/// The caller of a request and its quota, taken out of the request (for a
/// method that consumes its request before it knows the collection).
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// The caller (`None`: the request never passed a gate).
    pub caller: Option<Caller>,
    /// Its quota (none: no limits, or one of the servers).
    pub quota: Option<Quota>,
}

impl Who {
    /// Who sent a request.
    pub fn of(extensions: &http::Extensions) -> Who {
        Who {
            caller: Caller::of(extensions),
            quota: Quota::of(extensions),
        }
    }
}

/// Whom a call is counted against, and the limits (in a request's
/// extensions when the server has rate limits and the caller is not one of
/// the servers).
#[derive(Debug, Clone)]
pub struct Quota {
    limits: Arc<RateLimits>,
    /// The token's subject, or the peer's address without tokens.
    who: Arc<str>,
}

impl Quota {
    /// The quota of a request.
    pub fn of(extensions: &http::Extensions) -> Option<Quota> {
        extensions.get::<Quota>().cloned()
    }

    /// Whether the limits count `op` at all (a server need not find the
    /// collection of a call it will not count).
    pub fn counts(extensions: &http::Extensions, op: Op) -> bool {
        extensions
            .get::<Quota>()
            .is_some_and(|quota| quota.limits.limits(op))
    }

    /// Counts a call doing `op` on `collection` (nothing without a quota).
    ///
    /// # Errors
    /// RESOURCE_EXHAUSTED with the wait in `retry-after-ms`.
    pub fn charge_to(quota: Option<&Quota>, op: Op, collection: &str) -> Result<(), Status> {
        match quota {
            Some(quota) => quota
                .limits
                .check_grpc(&quota.who, op, collection)
                .map_err(|limited| limited.status()),
            None => Ok(()),
        }
    }
}

impl Caller {
    /// The caller of a request (`None` if it never passed a gate).
    pub fn of(extensions: &http::Extensions) -> Option<Caller> {
        extensions.get::<Caller>().cloned()
    }

    /// [`require`] for a caller taken out of its request.
    ///
    /// # Errors
    /// PERMISSION_DENIED, or INTERNAL for `None`.
    pub fn require(caller: Option<&Caller>, op: Op, collection: &str) -> Result<(), Status> {
        match caller {
            Some(Caller::Anyone) => Ok(()),
            Some(Caller::Token(principal)) if principal.allows(op, collection) => Ok(()),
            Some(Caller::Token(principal)) => {
                metrics::counter!("hayloft_grpc_denied_total", "reason" => "scope").increment(1);
                Err(Status::permission_denied(format!(
                    "token {} ({}) has no {} scope",
                    principal.token_id,
                    principal.subject,
                    match op.has_collection() {
                        false => op.name().to_owned(),
                        true => format!("{}:{}", op.name(), crate::collection_name(collection)),
                    }
                )))
            }
            None => Err(Status::internal("the request did not pass the token gate")),
        }
    }
}

/// The layer that puts a [`Gate`] (or, with none, [`Caller::Anyone`]) in
/// front of a tonic server's services, and the caller's [`Quota`] when the
/// server has rate limits.
#[derive(Debug, Clone, Default)]
pub struct GateLayer {
    gate: Option<Arc<Gate>>,
    limits: Option<Limiting>,
    audit: Option<Auditing>,
}

#[derive(Debug, Clone)]
struct Auditing {
    log: Arc<AuditLog>,
    rules: fn(&str) -> Need,
}

#[derive(Debug, Clone)]
struct Limiting {
    limits: Arc<RateLimits>,
    rules: fn(&str) -> Need,
}

impl GateLayer {
    /// Checks every call with `gate`; `None`: tokens are not required.
    pub fn new(gate: Option<Arc<Gate>>) -> GateLayer {
        GateLayer {
            gate,
            limits: None,
            audit: None,
        }
    }

    /// Logs calls to `log` (none: no audit log): every call of a client and
    /// every refusal, reads (by the server's table of methods `rules`) as
    /// the log's `reads` setting says.
    pub fn with_audit(mut self, log: Option<Arc<AuditLog>>, rules: fn(&str) -> Need) -> Self {
        self.audit = log.map(|log| Auditing { log, rules });
        self
    }

    /// Counts calls against `limits` (none: no limits): admin calls (by
    /// the server's table of methods `rules`) here, the others where the
    /// method knows the collection ([`require`], [`Quota::charge_to`]).
    pub fn with_limits(mut self, limits: Option<Arc<RateLimits>>, rules: fn(&str) -> Need) -> Self {
        self.limits = limits.map(|limits| Limiting { limits, rules });
        self
    }
}

impl<S> tower_layer::Layer<S> for GateLayer {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.gate.clone(),
            limits: self.limits.clone(),
            audit: self.audit.clone(),
        }
    }
}

/// A service behind a [`GateLayer`].
#[derive(Debug, Clone)]
pub struct Gated<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
    limits: Option<Limiting>,
    audit: Option<Auditing>,
}

impl Limiting {
    /// The quota of `caller` (none for the servers' own calls), after
    /// counting an admin call.
    fn quota<B>(
        &self,
        caller: &Caller,
        request: &http::Request<B>,
    ) -> Result<Option<Quota>, Status> {
        let who: Arc<str> = match caller {
            Caller::Token(principal) if principal.allows(Op::Cluster, "") => return Ok(None),
            Caller::Token(principal) => Arc::from(principal.subject.as_str()),
            Caller::Anyone => match request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
            {
                Some(addr) => Arc::from(addr.ip().to_string()),
                None => return Ok(None),
            },
        };
        let quota = Quota {
            limits: Arc::clone(&self.limits),
            who,
        };
        if (self.rules)(request.uri().path()) == Need::Scope(Op::Admin) {
            Quota::charge_to(Some(&quota), Op::Admin, "")?;
        }
        Ok(Some(quota))
    }
}

type Answer<S, B> = Pin<
    Box<
        dyn Future<Output = Result<http::Response<tonic::body::Body>, <S as Service<B>>::Error>>
            + Send,
    >,
>;

use tower_service::Service;

impl<S, B> Service<http::Request<B>> for Gated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Answer<S, http::Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let caller = match &self.gate {
            None => Ok(Caller::Anyone),
            Some(gate) => gate.admit(request.uri().path(), request.headers()),
        };
        let quota = match (&caller, &self.limits) {
            (Ok(caller), Some(limiting)) => limiting.quota(caller, &request),
            _ => Ok(None),
        };
        let audited = self
            .audit
            .as_ref()
            .map(|audit| (audit, Started::of(&request, caller.as_ref().ok())));
        match (caller, quota) {
            (Ok(caller), Ok(quota)) => {
                let note = match audited {
                    Some((audit, started)) if audit.logs(request.uri().path(), &caller) => {
                        let note = Note::default();
                        request.extensions_mut().insert(note.clone());
                        Some((Arc::clone(&audit.log), started, note))
                    }
                    _ => None,
                };
                request.extensions_mut().insert(caller);
                if let Some(quota) = quota {
                    request.extensions_mut().insert(quota);
                }
                let answer = self.inner.call(request);
                match note {
                    None => Box::pin(answer),
                    Some((log, started, note)) => Box::pin(async move {
                        let result = answer.await;
                        // A method's refusal (a collection-narrowed scope,
                        // a grant, a per-collection limit) is an error
                        // answered in the headers: its message is the
                        // line's reason.
                        let (status, reason) = match &result {
                            Ok(response) => {
                                match tonic::Status::from_header_map(response.headers()) {
                                    Some(status) => (status.code(), status.message().to_owned()),
                                    None => (tonic::Code::Ok, String::new()),
                                }
                            }
                            Err(_) => (tonic::Code::Internal, "the service failed".to_owned()),
                        };
                        started.finish(&log, status, &reason, &note);
                        result
                    }),
                }
            }
            (Err(status), _) | (_, Err(status)) => {
                if let Some((audit, started)) = audited {
                    started.finish(
                        &audit.log,
                        status.code(),
                        status.message(),
                        &Note::default(),
                    );
                }
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

impl Auditing {
    /// Whether a call of `path` by `caller` that was let through is logged.
    fn logs(&self, path: &str, caller: &Caller) -> bool {
        let token = match caller {
            // The servers' own calls: only refusals.
            Caller::Token(principal) if principal.allows(Op::Cluster, "") => return false,
            Caller::Token(_) => true,
            Caller::Anyone => false,
        };
        match (self.rules)(path) {
            Need::Open | Need::Token | Need::Scope(Op::Read) => match self.log.reads() {
                AuditReads::All => true,
                AuditReads::Signed => token,
                AuditReads::None => false,
            },
            Need::Scope(Op::Cluster) => false,
            Need::Scope(_) => true,
        }
    }
}

/// What a call's audit line takes from its request.
struct Started {
    at: std::time::Instant,
    method: String,
    request_id: String,
    client: String,
    subject: String,
    token_id: String,
}

impl Started {
    fn of<B>(request: &http::Request<B>, caller: Option<&Caller>) -> Started {
        let (subject, token_id) = match caller {
            Some(Caller::Token(principal)) => {
                (principal.subject.clone(), principal.token_id.clone())
            }
            _ => (String::new(), String::new()),
        };
        Started {
            at: std::time::Instant::now(),
            method: request
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            request_id: hayloft_proto::request_id_header(request.headers()).to_owned(),
            client: request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|info| info.remote_addr())
                .map(|addr| addr.ip().to_string())
                .unwrap_or_default(),
            subject,
            token_id,
        }
    }

    /// Logs the call (one line per blob the method noted, if several).
    /// Blobs a streaming method notes later (a batch's) are logged as they
    /// come.
    fn finish(self, log: &Arc<AuditLog>, status: tonic::Code, reason: &str, note: &Note) {
        let template = Event {
            request_id: self.request_id,
            subject: self.subject,
            token_id: self.token_id,
            client: self.client,
            protocol: "grpc",
            op: self.method,
            ..Event::default()
        };
        let mut notes = note.0.lock();
        let items = std::mem::take(&mut notes.items);
        let call = std::mem::take(&mut notes.call);
        if items.is_empty() && !(notes.per_item && status == tonic::Code::Ok) {
            log.record(line(&template, self.at, call, status, reason));
        }
        for (item, code) in items {
            log.record(line(&template, self.at, item, code, ""));
        }
        notes.finished = Some((Arc::clone(log), template, self.at));
    }
}

/// One audit line: the call's `template` with a blob and how it ended.
fn line(
    template: &Event,
    started: std::time::Instant,
    blob: Noted,
    status: tonic::Code,
    reason: &str,
) -> Event {
    Event {
        target: blob.target,
        blob: blob.blob,
        collection: blob.collection,
        status: code_name(status),
        reason: match (status, blob.reason) {
            (tonic::Code::Ok, _) => String::new(),
            (_, Some(noted)) if !noted.is_empty() => noted,
            _ if !reason.is_empty() => reason.to_owned(),
            // Every refusal says why, if only by its code.
            _ => status.description().to_owned(),
        },
        bytes: blob.bytes,
        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        ..template.clone()
    }
}

/// The name of a gRPC code as the spec writes it (`PERMISSION_DENIED`).
pub fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// What a method tells the audit log about its call: the blob, its
/// collection, the bytes; for a batch, each blob with its own outcome. In
/// the request's extensions when the call is logged.
#[derive(Debug, Clone, Default)]
pub struct Note(Arc<parking_lot::Mutex<Notes>>);

#[derive(Debug, Default)]
struct Notes {
    /// The method logs a line per blob ([`Note::item`]), none for the call
    /// unless it failed as a whole.
    per_item: bool,
    call: Noted,
    items: Vec<(Noted, tonic::Code)>,
    /// Once the call has answered: where later blobs go at once.
    finished: Option<(Arc<AuditLog>, Event, std::time::Instant)>,
}

#[derive(Debug, Default)]
struct Noted {
    target: String,
    blob: String,
    collection: String,
    bytes: u64,
    reason: Option<String>,
}

impl Note {
    /// The note of a request (none: the call is not logged).
    pub fn of(extensions: &http::Extensions) -> Option<Note> {
        extensions.get::<Note>().cloned()
    }

    /// The call's blob, its collection (as people name it:
    /// [`crate::collection_name`]; empty if unknown) and the bytes written
    /// or sent.
    pub fn blob(&self, blob: &str, collection: &str, bytes: u64) {
        let mut notes = self.0.lock();
        notes.call.blob = blob.to_owned();
        notes.call.collection = collection.to_owned();
        notes.call.bytes = bytes;
    }

    /// What an admin call acts on (a token id, a volume).
    pub fn target(&self, target: &str) {
        self.0.lock().call.target = target.to_owned();
    }

    /// The call's collection (a call about no single blob).
    pub fn collection(&self, collection: &str) {
        self.0.lock().call.collection = collection.to_owned();
    }

    /// The call is a batch: a line per blob ([`item`](Self::item)), none for
    /// the call unless it fails as a whole.
    pub fn per_item(&self) {
        self.0.lock().per_item = true;
    }

    /// One blob of a batch and how it ended (a line of its own).
    pub fn item(&self, blob: &str, collection: &str, bytes: u64, outcome: Result<(), &Status>) {
        let (code, reason) = match outcome {
            Ok(()) => (tonic::Code::Ok, None),
            Err(status) => (status.code(), Some(status.message().to_owned())),
        };
        let noted = Noted {
            target: String::new(),
            blob: blob.to_owned(),
            collection: collection.to_owned(),
            bytes,
            reason,
        };
        let mut notes = self.0.lock();
        match &notes.finished {
            Some((log, template, started)) => log.record(line(template, *started, noted, code, "")),
            None => notes.items.push((noted, code)),
        }
    }
}
