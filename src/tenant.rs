//! Who a call is from: the tenant whose share of a model's workers it
//! uses, and how far up its own tenant's queue it may ask to go.
//!
//! With auth off every call is the `anonymous` tenant; an API key makes
//! the key's name the tenant (and its weight and priority cap apply); an
//! mTLS client without a key is the tenant of its certificate's subject.
//! A model's queue serves waiting calls of different tenants in weighted
//! round robin, and within one tenant by priority, then arrival.

use std::sync::{Arc, OnceLock};

use crate::auth::Key;
use crate::auth::limits::CallPermit;
use crate::error::Error;

/// The tenant of calls that carry no identity (auth off).
pub const ANONYMOUS: &str = "anonymous";

/// The highest `priority` a request may ask for.
pub const MAX_PRIORITY: u32 = 100;

/// Who a call is from, as admission and the queue see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant's name: an API key's name, an mTLS subject, or
    /// `anonymous`. A bounded metric label.
    pub tenant: Arc<str>,
    /// The tenant's share in weighted round robin (at least 1).
    pub weight: u32,
    /// The highest priority this caller's requests get (higher ones are
    /// capped to it).
    pub max_priority: u32,
    /// The API key the call came with, if any: its models and limits.
    pub key: Option<Arc<Key>>,
}

impl Caller {
    /// A call without identity: one shared tenant, any priority.
    pub fn anonymous() -> Self {
        static NAME: OnceLock<Arc<str>> = OnceLock::new();
        Caller {
            tenant: NAME.get_or_init(|| Arc::from(ANONYMOUS)).clone(),
            weight: 1,
            max_priority: MAX_PRIORITY,
            key: None,
        }
    }

    /// A tenant without a key (an mTLS identity): weight 1, any priority.
    pub fn named(tenant: Arc<str>) -> Self {
        Caller {
            tenant,
            ..Caller::anonymous()
        }
    }

    /// Checks a call to `model` against the caller's key (its models,
    /// concurrency and rate); the permit holds its place under the key's
    /// concurrency limit until the call ends.
    pub(crate) fn admit(&self, model: &str) -> Result<CallPermit, Error> {
        match &self.key {
            None => Ok(None),
            Some(key) => key.admit(model),
        }
    }

    /// The priority a request asking for `asked` gets.
    pub fn priority(&self, asked: u32) -> u32 {
        asked.min(self.max_priority)
    }
}

impl Default for Caller {
    fn default() -> Self {
        Caller::anonymous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_is_capped_by_the_caller() {
        let mut caller = Caller::anonymous();
        assert_eq!(caller.priority(7), 7);
        caller.max_priority = 3;
        assert_eq!(caller.priority(7), 3);
        assert_eq!(&*caller.tenant, ANONYMOUS);
    }
}
