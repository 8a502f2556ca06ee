//! Who may call what: the scope each call needs, and a write's collection
//! checked against the caller's token or grant.

#[allow(unused_imports)]
use super::*;

/// What each `Volume` method asks of a token (when tokens are required).
/// Writes are checked per blob (a grant, or `write:<collection>`), reads
/// and deletes per volume's collection; the copies' own calls need the
/// `cluster` scope; operators' calls `admin`. Methods not listed need
/// `cluster` (fail closed).
pub fn needs(path: &str) -> Need {
    let method = path.strip_prefix("/hayloft.v1.Volume/").unwrap_or("");
    match method {
        "Write" | "WriteBatch" => Need::Token,
        "Read" | "Stat" => Need::Scope(Op::Read),
        "Delete" => Need::Scope(Op::Delete),
        "CreateVolume" | "ListVolumes" | "Compact" | "MoveVolume" | "ListMoves"
        | "DeleteVolume" | "SealCopy" => Need::Scope(Op::Admin),
        _ => Need::Scope(Op::Cluster),
    }
}

impl VolumeService {
    /// May the caller of a request do `op` on `blob`? (A volume not held
    /// here is left to the call, which answers NOT_FOUND.) Notes the blob
    /// for the audit log.
    pub(super) fn require_on(
        &self,
        extensions: &tonic::Extensions,
        op: Op,
        blob: BlobId,
    ) -> Result<(), Status> {
        let note = Note::of(extensions);
        // Without tokens required, a limit to count or an audit line to
        // write, no look-up on the read path.
        if matches!(extensions.get::<Caller>(), Some(Caller::Anyone))
            && note.is_none()
            && !hayloft_access::grpc::Quota::counts(extensions, op)
        {
            return Ok(());
        }
        match self.collection_here(blob.volume()) {
            Some(collection) => {
                if let Some(note) = note {
                    let name = hayloft_access::collection_name(&collection);
                    note.blob(&blob.to_string(), name, 0);
                }
                hayloft_access::grpc::require(extensions, op, &collection)
            }
            None => {
                if let Some(note) = note {
                    note.blob(&blob.to_string(), "", 0);
                }
                Ok(())
            }
        }
    }

    /// The collection of a blob's volume as people name it, if it is held
    /// here (for the audit log; empty otherwise).
    pub(super) fn collection_of(&self, blob_id: &str) -> String {
        blob_id
            .parse::<BlobId>()
            .ok()
            .and_then(|blob| self.collection_here(blob.volume()))
            .map(|collection| hayloft_access::collection_name(&collection).to_owned())
            .unwrap_or_default()
    }

    /// The collection of a volume held here: a copy, or an erasure-coded
    /// volume (whose shards may be elsewhere).
    fn collection_here(&self, volume: VolumeId) -> Option<String> {
        match self.store.handle(volume) {
            Ok(handle) => Some(handle.collection().to_owned()),
            Err(_) => self
                .store
                .erasure(volume)
                .ok()
                .map(|erasure| erasure.collection().to_owned()),
        }
    }

    /// May `caller` write `header`'s blob into a volume of `collection`?
    /// A forwarded write comes from another server (scope `cluster`); a
    /// client's carries the grant Assign gave it, or a token allowing
    /// `write:<collection>`.
    pub(super) fn authorize_write(
        &self,
        who: &Who,
        header: &WriteHeader,
        collection: &str,
    ) -> Result<(), Status> {
        if header.forwarded {
            return Caller::require(who.caller.as_ref(), Op::Cluster, "");
        }
        if let (Some(keyring), false) = (&self.grants, header.grant.is_empty()) {
            let now = unix_now();
            return hayloft_access::token::check_grant(
                &keyring.get(),
                &header.grant,
                &header.blob_id,
                now,
                self.skew,
            )
            .map_err(|e| {
                ::metrics::counter!("hayloft_grpc_denied_total", "reason" => "grant").increment(1);
                Status::permission_denied(format!(
                    "the write grant for blob {} is not valid: {e}",
                    header.blob_id
                ))
            });
        }
        Caller::require(who.caller.as_ref(), Op::Write, collection)
    }
}
