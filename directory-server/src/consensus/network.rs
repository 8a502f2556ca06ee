//! Raft messages between directory nodes over tonic: the `hayloft.v1.Raft`
//! service on each node's gRPC port, and openraft's network client.
//!
//! A payload is the JSON of openraft's request, or of its
//! `Result<response, RaftError>`: a refusal by the remote Raft (a higher
//! term, a conflicting log) is an answer, not a transport error.

use std::error::Error as StdError;
use std::time::Duration;

use hayloft_proto::RaftPayload;
use hayloft_proto::raft_client::RaftClient;
use hayloft_proto::raft_server::Raft as RaftRpc;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::{Raft, TypeConfig};

/// How long a node may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The `hayloft.v1.Raft` service: hands each message to the local node.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    /// Serves `raft`'s peers.
    pub fn new(raft: Raft) -> RaftService {
        RaftService { raft }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&request.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(RaftPayload { json }))
        .map_err(|e| Status::internal(format!("unencodable Raft message: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<u64> = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

/// Makes a [`Peer`] per node openraft talks to.
pub(crate) struct Network {
    /// What this node presents to the others.
    pub(crate) credential: hayloft_proto::Credential,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let client = self.credential.endpoint(&node.addr).map(|endpoint| {
            RaftClient::new(
                self.credential.channel(
                    endpoint
                        .connect_timeout(CONNECT_TIMEOUT)
                        .tcp_nodelay(true)
                        .connect_lazy(),
                ),
            )
            .max_decoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(hayloft_proto::MAX_MESSAGE_BYTES)
        });
        Peer {
            target,
            client: client.map_err(|e| e.message().to_owned()),
        }
    }
}

/// openraft's connection to one other node.
pub(crate) struct Peer {
    target: u64,
    client: Result<RaftClient<hayloft_proto::AuthChannel>, String>,
}

type Reply = Result<Result<Response<RaftPayload>, Status>, tokio::time::error::Elapsed>;

impl Peer {
    fn client<E: StdError>(
        &self,
    ) -> Result<RaftClient<hayloft_proto::AuthChannel>, RPCError<u64, BasicNode, E>> {
        self.client.clone().map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "bad address of directory node {}: {e}",
                self.target
            ))))
        })
    }

    /// Decodes a reply: a transport failure or a timeout makes the node
    /// unreachable (openraft backs off), a refusal is the remote's error.
    fn finish<T, E>(&self, reply: Reply) -> Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        T: DeserializeOwned,
        E: StdError + DeserializeOwned,
    {
        let payload = match reply {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&status))),
            Err(elapsed) => return Err(RPCError::Unreachable(Unreachable::new(&elapsed))),
        };
        let result: Result<T, RaftError<u64, E>> = serde_json::from_slice(&payload.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn payload<T: Serialize, E: StdError>(rpc: &T) -> Result<RaftPayload, RPCError<u64, BasicNode, E>> {
    serde_json::to_vec(rpc)
        .map(|json| RaftPayload { json })
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let request = payload(&rpc)?;
        let mut client = self.client()?;
        let reply = tokio::time::timeout(option.hard_ttl(), client.append_entries(request)).await;
        self.finish(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let request = payload(&rpc)?;
        let mut client = self.client()?;
        let reply = tokio::time::timeout(option.hard_ttl(), client.install_snapshot(request)).await;
        self.finish(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let request = payload(&rpc)?;
        let mut client = self.client()?;
        let reply = tokio::time::timeout(option.hard_ttl(), client.vote(request)).await;
        self.finish(reply)
    }
}
