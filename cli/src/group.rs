//! `hayloft directory add-node` / `remove-node`: online membership changes
//! of the directory group, asked of its leader.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use hayloft_proto::{AddNodeRequest, Membership, RemoveNodeRequest};

use crate::commands::Connection;

/// The directory's subcommands (without one, `hayloft directory` serves).
#[derive(Subcommand)]
pub enum GroupCommand {
    /// Add a node to the directory group: start it first with
    /// `hayloft directory --node-id N --listen ADDR --join`; it catches up
    /// (log or snapshot), then votes.
    AddNode(AddNodeArgs),
    /// Remove a node from the directory group (the leader too: it hands over).
    RemoveNode(RemoveNodeArgs),
}

/// `hayloft directory add-node`'s arguments.
#[derive(Args)]
pub struct AddNodeArgs {
    /// The new node's id (unused in the group).
    #[arg(long)]
    node_id: u64,
    /// Its gRPC address, as the other nodes reach it.
    #[arg(long)]
    addr: String,
    #[command(flatten)]
    connection: Connection,
}

/// `hayloft directory remove-node`'s arguments.
#[derive(Args)]
pub struct RemoveNodeArgs {
    /// The id of the node to remove.
    #[arg(long)]
    node_id: u64,
    #[command(flatten)]
    connection: Connection,
}

/// A membership change waits for the new node to catch up (up to a minute
/// on the leader) and for two commits.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs a `hayloft directory` group command.
pub async fn run(command: GroupCommand) -> anyhow::Result<()> {
    let membership = match command {
        GroupCommand::AddNode(args) => {
            let directory = args
                .connection
                .directories()?
                .with_call_timeout(CHANGE_TIMEOUT)?;
            let request = AddNodeRequest {
                node_id: args.node_id,
                addr: args.addr.clone(),
            };
            directory
                .call(|mut d| {
                    let request = request.clone();
                    async move { d.add_node(request).await }
                })
                .await
                .with_context(|| format!("adding node {} at {}", args.node_id, args.addr))?
        }
        GroupCommand::RemoveNode(args) => {
            let directory = args
                .connection
                .directories()?
                .with_call_timeout(CHANGE_TIMEOUT)?;
            let node_id = args.node_id;
            directory
                .call(|mut d| async move { d.remove_node(RemoveNodeRequest { node_id }).await })
                .await
                .with_context(|| format!("removing node {node_id}"))?
        }
    };
    print_membership(&membership);
    Ok(())
}

fn print_membership(membership: &Membership) {
    println!("voters:   {}", membership.voters.join(" "));
    if !membership.learners.is_empty() {
        println!("learners: {}", membership.learners.join(" "));
    }
}
