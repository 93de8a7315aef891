//! The fleet's record of a refused fetch, under `<key>:refused`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;

use crate::error::Error;
use crate::store::seal::{Sealer, TAG_LEN};

/// A refused fetch: `'S' ‖ kind ‖ status (2 bytes) ‖ pause in ms (8 bytes) ‖ made at, in ms
/// since the Unix epoch (8 bytes) ‖ keyed tag (32 bytes)`, stored for twice the pause. The
/// refusal holds while more than `pause` of its time to live is left and less than `pause`
/// has passed since it was made (by the reader's wall clock); until twice the pause has passed
/// the record remembers the pause, so that the next refusal in a row doubles it, and after that
/// it is ignored. It holds no secret; its tag keeps whoever lacks the client secret from
/// forging one or changing when it was made, so an old record stored again is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) rate_limited: bool,
    pub(super) status: u16,
    pub(super) pause: Duration,
    /// When it was made, in milliseconds since the Unix epoch.
    pub(super) made_ms: u64,
}

/// The first byte of a record (`'R'` marked the records without a time, now ignored).
pub(super) const REFUSAL_MARK: u8 = b'S';
const REFUSAL_BODY_LEN: usize = 20;

/// Milliseconds since the Unix epoch, by this machine's clock (zero before it).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Refusal {
    /// A refusal made now.
    pub(super) fn new(rate_limited: bool, status: u16, pause: Duration) -> Self {
        Refusal {
            rate_limited,
            status,
            pause,
            made_ms: now_ms(),
        }
    }

    /// The refusal a fetch error is worth recording: a 429, or a 5xx answer.
    pub(super) fn of(error: &Error) -> Option<(bool, u16)> {
        match error.kind() {
            crate::ErrorKind::RateLimited => Some((true, 429)),
            crate::ErrorKind::Unavailable => error
                .status()
                .filter(|s| s.is_server_error())
                .map(|s| (false, s.as_u16())),
            _ => None,
        }
    }

    /// How long ago it was made, by this machine's clock (zero for a time ahead of it: a
    /// clock behind the writer's).
    pub(super) fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.made_ms))
    }

    pub(super) fn encode(&self, sealer: &Sealer) -> Vec<u8> {
        let mut body = Vec::with_capacity(REFUSAL_BODY_LEN + TAG_LEN);
        body.push(REFUSAL_MARK);
        body.push(u8::from(self.rate_limited));
        body.extend_from_slice(&self.status.to_be_bytes());
        let ms = u64::try_from(self.pause.as_millis()).unwrap_or(u64::MAX);
        body.extend_from_slice(&ms.to_be_bytes());
        body.extend_from_slice(&self.made_ms.to_be_bytes());
        let tag = sealer.refusal_tag(&body);
        body.extend_from_slice(&tag);
        body
    }

    pub(super) fn decode(value: &[u8], sealer: &Sealer) -> Option<Refusal> {
        if value.len() != REFUSAL_BODY_LEN + TAG_LEN || value[0] != REFUSAL_MARK {
            return None;
        }
        let (body, tag) = value.split_at(REFUSAL_BODY_LEN);
        if !sealer.refusal_verifies(body, tag) {
            return None;
        }
        let rate_limited = match body[1] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let status = u16::from_be_bytes([body[2], body[3]]);
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        Some(Refusal {
            rate_limited,
            status,
            pause: Duration::from_millis(u64_at(4)),
            made_ms: u64_at(12),
        })
    }

    /// The error a process returns while the refusal holds, `left` of it remaining.
    pub(super) fn error(&self, left: Duration) -> Error {
        if self.rate_limited {
            return Error::rate_limited(Some(left));
        }
        let status = StatusCode::from_u16(self.status)
            .ok()
            .filter(StatusCode::is_server_error)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Error::server_error(status, Some(left))
    }
}
