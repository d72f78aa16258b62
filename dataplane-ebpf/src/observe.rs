//! Observe: flow events for drops and new connections, rate-limited per CPU, written to the
//! `WEIR_FLOWS_V2` ring buffer for the agent.
//!
//! Runs after the verdict is decided and counted, and never changes it: every failure here
//! (limiter empty, ring full) is counted and nothing else. Off until the agent sets
//! `FLOW_EVENTS`, at the cost of one array lookup and one branch per drop or new connection;
//! packets of established connections never reach it.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use dataplane_abi::{
    Direction, DropReason, FLOW_UNKNOWN, FLOW_WAKEUP_BYTES, FlowEvent, FlowVerdict, ObserveConfig,
    ObserveCounter, PassReason, PolicyValue, flow_flags, observe_flags,
};

use crate::parse::Packet;
use crate::verdict::count;
use crate::{FLOWS, OBSERVE, OBSERVE_BUCKETS, OBSERVE_COUNTERS, SCRATCH};

/// What the stages learnt about a packet that its flow event reports. Lives on the entry
/// point's stack; only the stages that decide a new connection write it.
pub struct Trace {
    pub peer_class: u32,
    pub policy: u32,
    pub rule: u32,
    /// The Service a translated packet went through.
    pub service: u32,
}

impl Trace {
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            peer_class: FLOW_UNKNOWN,
            policy: FLOW_UNKNOWN,
            rule: FLOW_UNKNOWN,
            service: FLOW_UNKNOWN,
        }
    }

    /// Records the policy entry that allowed the packet.
    #[inline(always)]
    pub fn allowed_by(&mut self, value: PolicyValue) {
        self.policy = value.policy;
        self.rule = value.rule;
    }
}

/// Whether an outcome deserves an event: every drop, and the first packet of a connection
/// policy let through (the only passes that create a conntrack entry). Established packets and
/// always-allowed traffic (node, link-local, non-IP) never do, so their cost stays unchanged.
#[inline(always)]
pub fn wanted(outcome: Result<PassReason, DropReason>) -> bool {
    matches!(
        outcome,
        Err(_) | Ok(PassReason::PolicyAllowed | PassReason::NotIsolated)
    )
}

/// Sends the flow event of a packet whose outcome is [`wanted`], if a reader wants events and
/// the limiter has credit.
#[inline(always)]
pub fn flow(
    ctx: &TcContext,
    dir: Direction,
    outcome: Result<PassReason, DropReason>,
    trace: &Trace,
) {
    let Some(config) = OBSERVE.get(0) else {
        return;
    };
    if config.flags & observe_flags::FLOW_EVENTS == 0 {
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_credit(config, now) {
        count(&OBSERVE_COUNTERS, ObserveCounter::RateLimited as u32);
        return;
    }
    let Some(mut entry) = FLOWS.reserve::<FlowEvent>(0) else {
        count(&OBSERVE_COUNTERS, ObserveCounter::RingFull as u32);
        return;
    };
    // Filled in place: an 80-byte event does not fit on the stack next to the packet path.
    // SAFETY: the reserved record is valid and exclusively ours until submitted.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill(ev, ctx, dir, outcome, trace, now);
    // A wake-up (an irq_work, then the reader's CPU woken) costs microseconds, many times the
    // event itself: wake the reader only once a batch is waiting. The agent also drains the
    // ring on a timer, so a lone event waits no longer than that.
    let wakeup = if FLOWS.query(BPF_RB_AVAIL_DATA.into()) >= FLOW_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(wakeup.into());
    count(&OBSERVE_COUNTERS, ObserveCounter::Emitted as u32);
}

/// The token bucket of this CPU (see `ObserveConfig`): earns credit with time, up to the
/// burst, and spends one event's cost per event. A program interrupted on this CPU by another
/// may lose one update; that skews the rate by one event, never a verdict.
#[inline(always)]
fn take_credit(config: &ObserveConfig, now: u64) -> bool {
    if config.event_cost_ns == 0 {
        return true;
    }
    let Some(bucket) = OBSERVE_BUCKETS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, valid for this program run.
    let bucket = unsafe { &mut *bucket };
    let earned = now.saturating_sub(bucket.last_ns);
    let credit = bucket.credit_ns.saturating_add(earned).min(config.burst_ns);
    bucket.last_ns = now;
    if credit < config.event_cost_ns {
        bucket.credit_ns = credit;
        return false;
    }
    bucket.credit_ns = credit - config.event_cost_ns;
    true
}

/// Writes every field of `ev` (a ring record holds whatever was there before).
#[inline(always)]
fn fill(
    ev: &mut FlowEvent,
    ctx: &TcContext,
    dir: Direction,
    outcome: Result<PassReason, DropReason>,
    trace: &Trace,
    now: u64,
) {
    let (verdict, reason) = match outcome {
        Ok(reason) => (FlowVerdict::Passed, reason as u32),
        Err(reason) => (FlowVerdict::Dropped, reason as u32),
    };
    ev.time_ns = now;
    ev.direction = dir as u8;
    ev.verdict = verdict as u8;
    ev.reason = reason;
    // SAFETY: `skb` points at the context the kernel passed this program.
    ev.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ev.peer_class = trace.peer_class;
    ev.policy = trace.policy;
    ev.rule = trace.rule;
    ev.service = trace.service;
    ev._pad = [0; 3];
    ev._pad2 = 0;
    ev.src = [0; 16];
    ev.dst = [0; 16];
    ev.src_port_h = 0;
    ev.dst_port_h = 0;
    ev.proto = 0;
    ev.tcp_flags = 0;
    ev.flags = 0;
    // A malformed packet may have left the scratch slot half written, or holding the previous
    // packet's headers: report none rather than wrong ones.
    if outcome != Err(DropReason::Malformed)
        && let Some(pkt) = SCRATCH.get_ptr(0)
    {
        // SAFETY: this CPU's slot, filled by this program run's parse.
        let pkt: &Packet = unsafe { &(*pkt).pkt };
        ev.src = pkt.src;
        ev.dst = pkt.dst;
        ev.src_port_h = pkt.src_port_h;
        ev.dst_port_h = pkt.dst_port_h;
        ev.proto = pkt.proto;
        ev.tcp_flags = pkt.tcp_flags;
        ev.flags = flow_flags::HEADERS;
    }
}
