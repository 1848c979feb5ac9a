//! The conformance suite on two nodes of a cluster, over Redis Streams and
//! over NATS JetStream: every rule, and the model-based test with its steps
//! spread over both nodes, fresh nodes for restarts, and writes the engine
//! refuses. Needs the test run's own Redis and NATS (`scripts/engines.sh`
//! starts them), else the default ports; fails when they are missing.

use agentwire_conformance::model::{self, Target};
use agentwire_conformance::{ClusterDeployment, conformance_tests, test_nats, test_redis};
use proptest::prelude::*;

/// The suite on one engine, as a module named after it.
macro_rules! on_engine {
    ($engine:ident, $url:expr) => {
        mod $engine {
            use super::*;

            conformance_tests!(ClusterDeployment::new(&$url, "rules");
                numbering, concurrent_appends_stay_gap_free, deduplication, lifecycle, ownership, routing, cancel,
                retention_keeps_run_state, sweep_takes_the_oldest_first, idle_expiry, deletion, restart);

            proptest! {
                // Each case starts a deployment of its own on the engine.
                #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

                #[test]
                fn the_log_follows_the_model(steps in model::steps()) {
                    model::check(&Target::Cluster($url), &steps, None)?;
                }
            }
        }
    };
}

on_engine!(redis, test_redis());
on_engine!(nats, test_nats());
