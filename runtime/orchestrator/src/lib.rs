//! Lifeboat's orchestrator: what a run needs beyond the plan's text. Today: `network`, the
//! addresses each VM's NICs get at the target (failover) or in the test network (drills).

pub mod network;
