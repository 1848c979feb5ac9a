//! The conformance suite on the memory log: every rule but `restart` (it
//! keeps nothing), and the model-based test.

use agentwire_conformance::model::{self, Target};
use agentwire_conformance::{MemoryDeployment, conformance_tests};
use proptest::prelude::*;

conformance_tests!(MemoryDeployment::new();
    numbering, concurrent_appends_stay_gap_free, deduplication, lifecycle, ownership, routing, cancel,
    retention_keeps_run_state, sweep_takes_the_oldest_first, idle_expiry, deletion, input_requests, one_run_at_a_time);

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_log_follows_the_model(steps in model::steps(), keep in model::keep()) {
        model::check(&Target::Memory, &steps, keep)?;
    }
}
