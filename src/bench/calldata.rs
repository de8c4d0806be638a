//! The values one call's templates see (ghz's `CallData`): the worker, the
//! request number, the method's names and the call's start time. Computed
//! when a template asks for them, so a call without templates pays nothing.

use std::cell::Cell;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::bench::call::Call;
use crate::bench::report::rfc3339;
use crate::bench::template::{Field, new_uuid, write_uuid};

/// One call's template data.
pub struct CallData<'a> {
    call: Call,
    worker_id: &'a str,
    request_number: u64,
    now: SystemTime,
    /// The call's `{{.UUID}}`, drawn on first use.
    uuid: Cell<Option<u128>>,
}

impl<'a> CallData<'a> {
    /// The data of call number `request_number`, made by `worker_id`,
    /// starting at `now`.
    pub fn new(call: Call, worker_id: &'a str, request_number: u64, now: SystemTime) -> Self {
        CallData {
            call,
            worker_id,
            request_number,
            now,
            uuid: Cell::new(None),
        }
    }

    /// Appends the value of `field` to `out`.
    pub fn write_field(&self, field: Field, out: &mut String) {
        let since = self.now.duration_since(UNIX_EPOCH).unwrap_or_default();
        // Writing to a String cannot fail.
        let _ = match field {
            Field::WorkerId => {
                out.push_str(self.worker_id);
                Ok(())
            }
            Field::RequestNumber => write!(out, "{}", self.request_number),
            Field::FullyQualifiedName => {
                out.push_str(self.call.full_name());
                Ok(())
            }
            Field::MethodName => {
                out.push_str(self.call.method_name());
                Ok(())
            }
            Field::ServiceName => {
                out.push_str(Call::SERVICE_NAME);
                Ok(())
            }
            Field::InputName => {
                out.push_str(self.call.input_name());
                Ok(())
            }
            Field::OutputName => {
                out.push_str(self.call.output_name());
                Ok(())
            }
            Field::IsClientStreaming => {
                out.push_str("false");
                Ok(())
            }
            Field::IsServerStreaming => write!(out, "{}", self.call.is_server_streaming()),
            Field::Timestamp => {
                // Go's time.RFC3339: whole seconds.
                let full = rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs()));
                out.push_str(full.split('.').next().unwrap_or(&full));
                out.push('Z');
                Ok(())
            }
            Field::TimestampUnix => write!(out, "{}", since.as_secs()),
            Field::TimestampUnixMilli => write!(out, "{}", since.as_millis()),
            Field::TimestampUnixNano => write!(out, "{}", since.as_nanos()),
            Field::Uuid => {
                let uuid = self.uuid.get().unwrap_or_else(|| {
                    let uuid = new_uuid();
                    self.uuid.set(Some(uuid));
                    uuid
                });
                write_uuid(out, uuid);
                Ok(())
            }
        };
    }
}
