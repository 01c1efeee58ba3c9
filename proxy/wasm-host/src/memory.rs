//! Guest memory access, in one place: every pointer and length a guest passes is bounds-checked
//! here, and data returned to the guest is allocated with the guest's own allocator.

use crate::abi::Status;
use crate::call_mode::CallMode;
use crate::state::HostState;
use wasmtime::Caller;

/// A host call's outcome: `Ok(Status)` goes back to the guest, `Err` traps it.
pub(crate) type HostResult = wasmtime::Result<i32>;

/// Either a status to return to the guest or a trap.
pub(crate) enum Failure {
    /// Return this status to the guest.
    Status(Status),
    /// Trap the guest (its allocator failed, or it exited).
    Trap(wasmtime::Error),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

impl From<wasmtime::Error> for Failure {
    fn from(error: wasmtime::Error) -> Self {
        Failure::Trap(error)
    }
}

/// Turns a host call body's result into what the guest sees.
pub(crate) fn finish(result: Result<(), Failure>) -> HostResult {
    match result {
        Ok(()) => Ok(Status::Ok.into()),
        Err(Failure::Status(status)) => Ok(status.into()),
        Err(Failure::Trap(error)) => Err(error),
    }
}

fn range(ptr: i32, len: i32, memory_size: usize) -> Result<std::ops::Range<usize>, Status> {
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(len as u32 as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    if end > memory_size {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(start..end)
}

/// Copies `len` bytes at `ptr` out of guest memory.
pub(crate) fn read(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<Vec<u8>, Status> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data(&caller);
    let range = range(ptr, len, data.len())?;
    Ok(data[range].to_vec())
}

/// Reads UTF-8 text at `ptr`; invalid UTF-8 is a bad argument.
pub(crate) fn read_string(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<String, Status> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// Writes `bytes` at `ptr` in guest memory.
pub(crate) fn write(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    bytes: &[u8],
) -> Result<(), Status> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let data = memory.data_mut(caller);
    let range = range(ptr, bytes.len() as i32, data.len())?;
    data[range].copy_from_slice(bytes);
    Ok(())
}

/// Writes a little-endian u32 at `ptr`.
pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    value: u32,
) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian u64 at `ptr`.
pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    value: u64,
) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest: allocates with `proxy_on_memory_allocate` (or `malloc`), copies, and
/// writes the pointer and size through `ptr_ptr` and `size_ptr`. The guest takes ownership.
pub(crate) async fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> Result<(), Failure> {
    // Check the return slots before allocating, so a bad pointer does not leak guest memory.
    let memory_size = caller
        .data()
        .memory
        .ok_or(Status::InvalidMemoryAccess)?
        .data_size(&caller);
    range(ptr_ptr, 4, memory_size)?;
    range(size_ptr, 4, memory_size)?;
    let size = i32::try_from(bytes.len()).map_err(|_| Status::InternalFailure)?;
    // Lent out for the call rather than cloned: a clone copies wasmtime's type registration.
    let allocate = caller
        .data_mut()
        .allocate
        .take()
        .ok_or(Status::InternalFailure)?;
    let allocated = match caller.data().calls {
        CallMode::Synchronous => allocate.call(&mut *caller, size),
        CallMode::Suspendable => allocate.call_async(&mut *caller, size).await,
    };
    caller.data_mut().allocate = Some(allocate);
    let ptr = allocated?;
    if ptr == 0 && size != 0 {
        return Err(Status::InternalFailure.into());
    }
    write(caller, ptr, bytes)?;
    write_u32(caller, ptr_ptr, ptr as u32)?;
    write_u32(caller, size_ptr, size as u32)?;
    Ok(())
}

/// Encodes pairs as the ABI's map: u32 count, (u32 key length, u32 value length) per pair, then each
/// key and value followed by a NUL byte.
pub fn encode_map<'a>(
    pairs: impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + Clone,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs.clone() {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// Decoded map pairs: `(name, value)` as bytes.
pub type MapPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes the ABI's map encoding; malformed input is a serialization failure.
pub fn decode_map(bytes: &[u8]) -> Result<MapPairs, Status> {
    let u32_at = |at: usize| -> Result<usize, Status> {
        let slice = bytes.get(at..at + 4).ok_or(Status::SerializationFailure)?;
        Ok(u32::from_le_bytes(slice.try_into().expect("four bytes")) as usize)
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let count = u32_at(0)?;
    let mut sizes_at = 4;
    let mut data_at = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or(Status::SerializationFailure)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    let take = |len: usize, at: &mut usize| -> Result<Vec<u8>, Status> {
        let end = at.checked_add(len).ok_or(Status::SerializationFailure)?;
        let value = bytes
            .get(*at..end)
            .ok_or(Status::SerializationFailure)?
            .to_vec();
        *at = end + 1; // skip the NUL terminator
        Ok(value)
    };
    for _ in 0..count {
        let (key_len, value_len) = (u32_at(sizes_at)?, u32_at(sizes_at + 4)?);
        sizes_at += 8;
        let key = take(key_len, &mut data_at)?;
        let value = take(value_len, &mut data_at)?;
        pairs.push((key, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_map_round_trips(pairs in proptest::collection::vec((".{0,40}", proptest::collection::vec(any::<u8>(), 0..64)), 0..32)) {
            let encoded = encode_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
            let decoded = decode_map(&encoded).unwrap();
            let expected: MapPairs = pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn guest_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(pairs) = decode_map(&bytes) {
                let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                prop_assert!(total <= bytes.len(), "decoded more than was given");
            }
        }

        #[test]
        fn forged_counts_and_lengths_are_refused_without_allocating(count in any::<u32>(), key_len in any::<u32>(), value_len in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = count.to_le_bytes().to_vec();
            bytes.extend_from_slice(&key_len.to_le_bytes());
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.extend_from_slice(&tail);
            if let Ok(pairs) = decode_map(&bytes) {
                prop_assert!(pairs.len() <= bytes.len());
            }
        }

        #[test]
        fn guest_ranges_stay_inside_memory(ptr in any::<i32>(), len in any::<i32>(), memory_size in 0usize..(1 << 33)) {
            if let Ok(range) = range(ptr, len, memory_size) {
                prop_assert!(range.start <= range.end && range.end <= memory_size);
                prop_assert_eq!(range.len(), len as u32 as usize);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let pairs: Vec<(&str, &[u8])> = vec![(":path", b"/x"), ("a", b""), ("b", b"2")];
        let encoded = encode_map(pairs.iter().copied());
        let decoded = decode_map(&encoded).unwrap();
        let expected: MapPairs = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn malformed_maps_are_rejected() {
        assert_eq!(decode_map(&[1, 0, 0]), Err(Status::SerializationFailure));
        assert_eq!(
            decode_map(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]),
            Err(Status::SerializationFailure)
        );
        assert_eq!(
            decode_map(&[0xff, 0xff, 0xff, 0xff]),
            Err(Status::SerializationFailure)
        );
        assert_eq!(decode_map(&[]).unwrap(), vec![]);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(range(0, 4, 4).is_ok());
        assert_eq!(range(1, 4, 4), Err(Status::InvalidMemoryAccess));
        assert_eq!(range(-1, 4, 1 << 20), Err(Status::InvalidMemoryAccess));
        assert_eq!(range(4, -1, 1 << 20), Err(Status::InvalidMemoryAccess));
    }
}
