//! eBPF debug logs: with `weir run --ebpf-debug-log`, the programs log every packet's outcome
//! through aya-log (interface, direction, verdict, reason, action, policy, Service), and the
//! agent forwards each record to `tracing` at debug level, target `weir::ebpf`. For debugging
//! only: a log record per packet costs far more than the packet's own path.

use aya_log::EbpfLogger;
use dataplane_abi::config_flags;

use super::{Dataplane, DataplaneError};

/// Reads the programs' log records into `L`; poll it when its descriptor is readable (see
/// [`EbpfLogger::flush`]). Dropping it closes the log ring.
pub type DebugLog<L = TracingLog> = EbpfLogger<L>;

impl Dataplane {
    /// Turns the programs' per-packet debug logs on and returns their reader, which hands
    /// each record to `logger` (the agent's is [`TracingLog`]).
    pub fn enable_debug_log<L: log::Log>(
        &mut self,
        logger: L,
    ) -> Result<DebugLog<L>, DataplaneError> {
        let logger = EbpfLogger::init_with_logger(&mut self.ebpf, logger)
            .map_err(|source| DataplaneError::DebugLog { source })?;
        self.config_flags |= config_flags::DEBUG_LOG;
        self.write_config()?;
        Ok(logger)
    }
}

/// Forwards aya-log records to `tracing`.
#[derive(Clone, Copy, Debug)]
pub struct TracingLog;

impl log::Log for TracingLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: "weir::ebpf", "{}", record.args());
    }

    fn flush(&self) {}
}
