//! Verdict: the one place a stage's outcome becomes a TC action, and is counted.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use dataplane_abi::{DropReason, PassReason};

use crate::{DROP_COUNTERS, PASS_COUNTERS};

#[inline(always)]
fn count(counters: &aya_ebpf::maps::PerCpuArray<u64>, index: u32) {
    if let Some(c) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// Counts the outcome and turns it into the TC return code.
#[inline(always)]
pub fn finish(outcome: Result<PassReason, DropReason>) -> i32 {
    match outcome {
        Ok(reason) => {
            count(&PASS_COUNTERS, reason as u32);
            TC_ACT_OK
        }
        Err(reason) => {
            count(&DROP_COUNTERS, reason as u32);
            TC_ACT_SHOT
        }
    }
}
