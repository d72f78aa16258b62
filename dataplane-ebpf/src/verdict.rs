//! Verdict: the one place a stage's outcome becomes a TC action, is counted, and is reported
//! as a flow event.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::programs::TcContext;
use dataplane_abi::{Direction, DropReason, PassReason};

use crate::observe::{self, Trace};
use crate::reject;
use crate::{DROP_COUNTERS, PASS_COUNTERS, SCRATCH};

/// Rejects a connection to a Service with no endpoint: the packet, turned into its answer, goes
/// back to the pod (counted and reported as the drop it also is).
#[inline(always)]
fn answer(ctx: &TcContext) -> Option<i32> {
    // SAFETY: this CPU's slot, filled by this program run's parse.
    let work = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    reject::answer(ctx, &work.pkt, &mut work.answer)
}

/// Adds one to slot `index` of a per-CPU counter array.
#[inline(always)]
pub fn count(counters: &aya_ebpf::maps::PerCpuArray<u64>, index: u32) {
    if let Some(c) = counters.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// Counts the outcome, reports it when it deserves a flow event, and turns it into the TC
/// return code.
#[inline(always)]
pub fn finish(
    ctx: &TcContext,
    dir: Direction,
    outcome: Result<PassReason, DropReason>,
    trace: &Trace,
) -> i32 {
    let action = match outcome {
        Ok(reason) => {
            count(&PASS_COUNTERS, reason as u32);
            TC_ACT_OK
        }
        Err(reason) => {
            count(&DROP_COUNTERS, reason as u32);
            if reason == DropReason::NoEndpoints && dir == Direction::Egress {
                answer(ctx).unwrap_or(TC_ACT_SHOT)
            } else {
                TC_ACT_SHOT
            }
        }
    };
    // The action is fixed above: whatever the event path does, it cannot change it.
    if observe::wanted(outcome) {
        observe::flow(ctx, dir, outcome, trace);
    }
    action
}
