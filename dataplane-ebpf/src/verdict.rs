//! Verdict: the one place a stage's outcome becomes a TC action, is counted, and is reported
//! as a flow event.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::programs::TcContext;
use aya_log_ebpf::debug;
use dataplane_abi::{Direction, DropReason, PassReason, config_flags};

use crate::observe::{self, Trace};
use crate::reject;
use crate::{CONFIG, DROP_COUNTERS, PASS_COUNTERS, SCRATCH};

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

/// What a rejected connection (`no_endpoints`) gets where a program sees it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rejects {
    /// The program sees the client's packets: the answer goes back to the client.
    Answer,
    /// The program sees packets towards a pod: nothing to answer, the packet is dropped.
    Drop,
}

/// Counts the outcome, reports it when it deserves a flow event, and turns it into the TC
/// return code.
#[inline(always)]
pub fn finish(
    ctx: &TcContext,
    dir: Direction,
    outcome: Result<PassReason, DropReason>,
    trace: &Trace,
    rejects: Rejects,
) -> i32 {
    let action = match outcome {
        Ok(reason) => {
            count(&PASS_COUNTERS, reason as u32);
            TC_ACT_OK
        }
        Err(reason) => {
            count(&DROP_COUNTERS, reason as u32);
            if reason == DropReason::NoEndpoints && rejects == Rejects::Answer {
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
    if debug_log_enabled() {
        let (passed, reason) = match outcome {
            Ok(reason) => (1u8, reason as u32),
            Err(reason) => (0u8, reason as u32),
        };
        // SAFETY: `skb` points at the context the kernel passed this program.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        debug!(
            ctx,
            "ifindex {} direction {} passed {} reason {} action {} policy {} service {}",
            ifindex,
            dir as u8,
            passed,
            reason,
            action,
            trace.policy,
            trace.service
        );
    }
    action
}

/// Per-packet debug logs (aya-log), off unless the agent runs with `--ebpf-debug-log`: one
/// array lookup and a branch when off.
#[inline(always)]
fn debug_log_enabled() -> bool {
    CONFIG
        .get(0)
        .is_some_and(|c| c.flags & config_flags::DEBUG_LOG != 0)
}
