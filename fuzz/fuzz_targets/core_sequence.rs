#![no_main]
use libfuzzer_sys::fuzz_target;
#[path = "../harness/core_driver.rs"]
mod core_driver;
#[path = "../../tests/support/fake_driver.rs"]
mod fake_driver;
#[path = "../../tests/support/stun_encoder.rs"]
mod stun_encoder;
use core_driver::{Driver, Scenario};
fuzz_target!(|scenario: Scenario| {
    let s = Driver::run(&scenario);
    if std::env::var_os("STATS").is_some() {
        let mut e: Vec<_> = s.errors.iter().collect();
        e.sort();
        eprintln!(
            "STATS ops={} defer={} alloc={} r0={} cb={} perm={} fwd={} dlv={} ind={} relays={} errs={:?}",
            scenario.ops.len(),
            scenario.deferred_opens,
            s.allocations,
            s.refreshes_to_zero,
            s.channel_binds,
            s.permissions,
            s.forwards,
            s.delivers,
            s.data_indications,
            s.relays_opened,
            e
        );
    }
});
