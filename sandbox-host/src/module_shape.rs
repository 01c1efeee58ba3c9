//! A caller's own module is checked for its shape before it is compiled: compiling is the costly
//! part (Cranelift's time grows with function count and body size), it runs for every request,
//! and it cannot be interrupted. The check reads only section headers and code-entry sizes, in
//! time linear in the module's size, and allocates nothing.

/// Bounds on a caller's module (`limits.module`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapeLimits {
    /// Most functions the module may define.
    pub max_functions: u32,
    /// Largest function body, in bytes.
    pub max_function_bytes: u32,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        Self {
            max_functions: 10_000,
            max_function_bytes: 128 << 10,
        }
    }
}

/// Why a module's shape was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Not a WebAssembly binary, or cut short.
    #[error("not a WebAssembly module: {0}")]
    Malformed(&'static str),
    /// Too many functions.
    #[error("the module defines {0} functions; at most {1} are accepted")]
    TooManyFunctions(u32, u32),
    /// A function body too large.
    #[error("function {index} has a {size}-byte body; at most {max} bytes are accepted")]
    FunctionTooLarge {
        /// Its index among the module's defined functions.
        index: u32,
        /// Its body's size.
        size: u32,
        /// The bound.
        max: u32,
    },
}

const SECTION_CODE: u8 = 10;

/// Checks a binary module's function count and body sizes against `limits`.
pub fn check(module: &[u8], limits: &ShapeLimits) -> Result<(), ShapeError> {
    let mut reader = Reader { bytes: module };
    if reader.take(8)? != b"\0asm\x01\0\0\0" {
        return Err(ShapeError::Malformed("bad header"));
    }
    while !reader.bytes.is_empty() {
        let id = reader.take(1)?[0];
        let size = reader.leb_u32()? as usize;
        let mut section = Reader {
            bytes: reader.take(size)?,
        };
        if id != SECTION_CODE {
            continue;
        }
        let count = section.leb_u32()?;
        if count > limits.max_functions {
            return Err(ShapeError::TooManyFunctions(count, limits.max_functions));
        }
        for index in 0..count {
            let body = section.leb_u32()?;
            if body > limits.max_function_bytes {
                return Err(ShapeError::FunctionTooLarge {
                    index,
                    size: body,
                    max: limits.max_function_bytes,
                });
            }
            section.take(body as usize)?;
        }
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ShapeError> {
        if n > self.bytes.len() {
            return Err(ShapeError::Malformed("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn leb_u32(&mut self) -> Result<u32, ShapeError> {
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u32::from(byte & 0x7f)
                .checked_shl(shift)
                .ok_or(ShapeError::Malformed("bad integer"))?;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ShapeError::Malformed("bad integer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with `count` functions, each an empty body padded to `body` bytes with `nop`s.
    fn module(count: u32, body: usize) -> Vec<u8> {
        let mut functions = String::new();
        for _ in 0..count {
            functions.push_str(&format!("(func {})", "nop ".repeat(body)));
        }
        wat::parse_str(format!("(module {functions})")).unwrap()
    }

    #[test]
    fn small_modules_pass() {
        assert_eq!(check(&module(3, 10), &ShapeLimits::default()), Ok(()));
        assert_eq!(check(&module(0, 0), &ShapeLimits::default()), Ok(()));
    }

    #[test]
    fn function_count_and_body_size_are_bounded() {
        let limits = ShapeLimits {
            max_functions: 5,
            max_function_bytes: 100,
        };
        assert_eq!(
            check(&module(6, 1), &limits),
            Err(ShapeError::TooManyFunctions(6, 5))
        );
        assert!(matches!(
            check(&module(1, 500), &limits),
            Err(ShapeError::FunctionTooLarge { index: 0, .. })
        ));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let limits = ShapeLimits::default();
        for bad in [
            &b""[..],
            b"\0asm",
            b"\0asm\x01\0\0\0\x0a\xff\xff\xff\xff\x0f",
            b"\0asm\x01\0\0\0\x0a\x05\xff\xff\xff\xff\xff",
            b"not wasm at all",
        ] {
            assert!(
                matches!(check(bad, &limits), Err(ShapeError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
