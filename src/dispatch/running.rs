//! The cancel tokens of the deliveries handed to the workers: registered
//! before a run waits for a worker, cancelled when the store marks the
//! delivery cancelled, forgotten when its attempt is recorded.

use tokio_util::sync::CancellationToken;

use super::Dispatcher;
use crate::store::DeliveryId;

impl Dispatcher {
    /// Stops the runs of `ids` now (those not running here have nothing
    /// to stop: the store's record decides their end).
    pub fn stop(&self, ids: &[DeliveryId]) {
        if ids.is_empty() {
            return;
        }
        let running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for id in ids {
            if let Some(token) = running.get(id) {
                tracing::info!(delivery = id, "Stopping a cancelled run.");
                token.cancel();
            }
        }
    }

    /// The cancel token of a delivery about to run, registered so that a
    /// cancel arriving before the run starts still stops it.
    pub(super) fn token(&self, id: DeliveryId) -> CancellationToken {
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        running.entry(id).or_default().clone()
    }

    pub(super) fn forget(&self, id: DeliveryId) {
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        running.remove(&id);
    }
}
