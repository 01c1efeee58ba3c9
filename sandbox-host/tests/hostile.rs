//! Hostile programs against the real interpreters and wasmtime: each ends with the right outcome,
//! and the sandbox keeps serving afterwards. The interpreters come from `make sandbox-runtimes`.

use sandbox_host::capabilities::Mount;
use sandbox_host::config::{ConcurrencySettings, RuntimeSettings};
use sandbox_host::limits::Limits;
use sandbox_host::runtimes::Language;
use sandbox_host::{Outcome, Program, Report, Sandbox, Settings};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The shipped configuration, with the compiled-module cache `make` points tests at.
fn settings(max_running: u32) -> Settings {
    let mut settings = Settings::load(&repo().join("sandbox-host/config/default.yaml")).unwrap();
    for RuntimeSettings { module, .. } in settings.runtimes.values() {
        assert!(
            module.is_file(),
            "{} missing: run `make sandbox-runtimes` (make test does)",
            module.display()
        );
    }
    settings.cache_dir = Some(
        std::env::var_os("SANDBOX_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/sandbox-cache")),
    );
    settings.concurrency = ConcurrencySettings {
        max_running,
        ..ConcurrencySettings::default()
    };
    settings
}

/// One sandbox per test binary (compiling CPython is the slow part; the cache makes it fast later).
fn sandbox() -> &'static Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX.get_or_init(|| Arc::new(Sandbox::new(&settings(8)).unwrap()))
}

fn limits() -> Limits {
    sandbox()
        .limit_settings()
        .resolve(&Default::default())
        .unwrap()
}

fn program(language: Language, code: &str) -> Program {
    Program {
        language,
        code: code.as_bytes().to_vec(),
        stdin: Vec::new(),
        args: Vec::new(),
    }
}

fn run_with(language: Language, code: &str, limits: Limits) -> Report {
    sandbox()
        .execute_blocking(program(language, code), limits, vec![])
        .unwrap()
}

fn run(language: Language, code: &str) -> Report {
    run_with(language, code, limits())
}

fn python(code: &str) -> Report {
    run(Language::Python, code)
}

/// A WASI command whose `_start` runs `body` (with a 1-page memory exported).
fn command(body: &str) -> String {
    format!(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             {body})"#
    )
}

#[test]
fn numpy_and_pandas_are_there_and_every_execution_starts_clean() {
    let report = python(
        "import numpy as np, pandas as pd\n\
         df = pd.DataFrame({'x': np.arange(4)})\n\
         leaked = 42\n\
         print(int(df.x.sum()))",
    );
    assert_eq!(
        (report.stdout.as_str(), report.outcome),
        ("6\n", Outcome::Ok)
    );
    // The next execution starts from the snapshot again: nothing the last one defined is there,
    // and a last expression is not echoed (`python -c` semantics).
    let report = python("print('leaked' in globals(), 'df' in globals())\n1 + 1");
    assert_eq!(report.stdout, "False False\n");
}

#[test]
fn every_execution_draws_its_own_random_numbers() {
    // The snapshot was taken with a fixed seed; each execution reseeds both generators.
    let code = "import random, numpy\nprint(random.random(), numpy.random.rand())";
    let (first, second) = (python(code).stdout, python(code).stdout);
    assert_ne!(first, second);
}

#[test]
fn a_numpy_allocation_past_the_memory_cap_ends_at_the_cap() {
    let report = python("import numpy as np\nx = np.ones(10**8)");
    assert_eq!(report.outcome, Outcome::MemoryLimit, "{report:?}");
    assert_eq!(python("print(6*7)").stdout, "42\n");
}

#[test]
fn python_and_javascript_answer() {
    let report = python("print(1 + 1)");
    assert_eq!(
        (report.outcome, report.stdout.as_str(), report.exit_code),
        (Outcome::Ok, "2\n", Some(0))
    );
    let report = run(Language::Javascript, "console.log(6 * 7)");
    assert_eq!(
        (report.outcome, report.stdout.as_str()),
        (Outcome::Ok, "42\n")
    );
}

#[test]
fn stdin_and_args_reach_the_program() {
    let mut program = program(
        Language::Python,
        "import sys; print(sys.argv[1:], sys.stdin.read().upper())",
    );
    program.stdin = b"hello".to_vec();
    program.args = vec!["a".into(), "b".into()];
    let report = sandbox()
        .execute_blocking(program, limits(), vec![])
        .unwrap();
    assert_eq!(report.stdout, "['a', 'b'] HELLO\n");
}

#[test]
fn an_uncaught_exception_is_an_error_with_its_traceback() {
    let report = python("raise ValueError('boom')");
    assert_eq!(
        (report.outcome, report.exit_code),
        (Outcome::Error, Some(1))
    );
    assert!(
        report.stderr.contains("ValueError: boom"),
        "{}",
        report.stderr
    );
}

#[test]
fn an_infinite_loop_is_stopped_by_the_wall_clock_deadline() {
    let limits = Limits {
        timeout_ms: 200,
        ..limits()
    };
    let report = run_with(
        Language::Wat,
        &command(r#"(func (export "_start") (loop (br 0)))"#),
        limits,
    );
    assert_eq!(report.outcome, Outcome::Timeout);
    assert!(report.detail.unwrap().contains("deadline"));
    assert!(report.duration_ms < 5_000.0, "stopped near its deadline");
}

#[test]
fn an_infinite_loop_is_stopped_by_fuel() {
    let limits = Limits {
        fuel: 10_000_000,
        timeout_ms: 30_000,
        ..limits()
    };
    let report = run_with(Language::Python, "while True: pass", limits);
    assert_eq!(report.outcome, Outcome::Timeout);
    assert!(report.detail.unwrap().contains("fuel"));
    assert_eq!(report.fuel_used, 10_000_000);
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 64 << 20,
        ..limits()
    };
    let report = run_with(Language::Python, "x = bytearray(1 << 30)", limits);
    assert_eq!(report.outcome, Outcome::MemoryLimit);
    let grow =
        command(r#"(func (export "_start") (loop (drop (memory.grow (i32.const 16))) (br 0)))"#);
    assert_eq!(
        run_with(Language::Wat, &grow, limits).outcome,
        Outcome::MemoryLimit
    );
}

#[test]
fn deep_recursion_traps_instead_of_aborting() {
    let report = run(
        Language::Wat,
        &command(r#"(func $f (export "_start") (call $f))"#),
    );
    assert_eq!(report.outcome, Outcome::Trap);
    let detail = report.detail.unwrap();
    assert!(detail.contains("call stack exhausted"), "{detail}");
    let report =
        python("import sys\nsys.setrecursionlimit(10**6)\ndef f(n): return f(n + 1)\nf(0)");
    assert_ne!(
        report.outcome,
        Outcome::Ok,
        "unbounded recursion cannot succeed"
    );
    assert_eq!(python("print('still serving')").stdout, "still serving\n");
}

#[test]
fn an_output_flood_is_truncated_at_the_cap_and_reported() {
    let limits = Limits {
        stdout_bytes: 10_000,
        ..limits()
    };
    let report = run_with(Language::Python, "while True: print('x' * 99)", limits);
    assert_eq!(report.outcome, Outcome::OutputLimit);
    assert!(report.stdout_truncated);
    assert_eq!(report.stdout.len(), 10_000);
}

#[test]
fn a_memory_copy_loop_is_stopped_by_the_deadline() {
    // memory.copy costs little fuel per call however many bytes it moves: the deadline stops it.
    let limits = Limits {
        timeout_ms: 300,
        ..limits()
    };
    let body = r#"(func (export "_start")
        (drop (memory.grow (i32.const 255)))
        (loop (memory.copy (i32.const 0) (i32.const 8388608) (i32.const 8388608)) (br 0)))"#;
    let report = run_with(Language::Wat, &command(body), limits);
    assert_eq!(report.outcome, Outcome::Timeout);
}

#[test]
fn the_host_filesystem_is_invisible() {
    let report = python("open('/etc/passwd').read()");
    assert_eq!(report.outcome, Outcome::Error);
    assert!(
        report.stderr.contains("FileNotFoundError"),
        "{}",
        report.stderr
    );
    let report = python("import os; print(os.listdir('/'))");
    assert_eq!(
        report.outcome,
        Outcome::Error,
        "no root directory is mounted"
    );
    let report = run(
        Language::Javascript,
        "const [f, err] = std.open('/etc/passwd', 'r') ? [1, 0] : [null, 1]; console.log(err)",
    );
    assert_eq!(report.stdout, "1\n");
}

#[test]
fn sockets_and_environment_are_unavailable() {
    let report = python("import socket; socket.create_connection(('127.0.0.1', 22))");
    assert_eq!(report.outcome, Outcome::Error);
    // Only the interpreter's fixed environment, none of the host's.
    let report = python("import os; print(sorted(os.environ))");
    assert_eq!(
        report.stdout, "['PYTHONTZPATH', 'TMPDIR']\n",
        "no host environment variables"
    );
}

#[test]
fn malformed_modules_and_unknown_imports_are_refused_before_running() {
    let bad = Program {
        code: b"\0asm\x01\0\0\0garbage".to_vec(),
        ..program(Language::Wasm, "")
    };
    let error = sandbox()
        .execute_blocking(bad, limits(), vec![])
        .unwrap_err();
    assert!(error.to_string().starts_with("invalid module"), "{error}");
    let missing = r#"(module (import "env" "launch_missiles" (func)) (func (export "_start")))"#;
    let error = sandbox()
        .execute_blocking(program(Language::Wat, missing), limits(), vec![])
        .unwrap_err();
    assert!(error.to_string().contains("launch_missiles"), "{error}");
    let no_start = "(module)";
    assert!(sandbox()
        .execute_blocking(program(Language::Wat, no_start), limits(), vec![])
        .is_err());
}

#[test]
fn a_reused_instance_slot_holds_nothing_from_the_previous_run() {
    // One slot, so every run reuses it. The guest prints 8 bytes at 1024 and at the start of a
    // grown page, then writes a secret to both; a later run must print zeros again.
    let sandbox = Arc::new(Sandbox::new(&settings(1)).unwrap());
    let body = r#"
        (func (export "_start")
          (drop (memory.grow (i32.const 1)))
          (i32.store (i32.const 0) (i32.const 1024)) (i32.store (i32.const 4) (i32.const 8))
          (i32.store (i32.const 8) (i32.const 65536)) (i32.store (i32.const 12) (i32.const 8))
          (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
          (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))
          (i64.store (i32.const 1024) (i64.const 0x5445524345535f5f))
          (i64.store (i32.const 65536) (i64.const 0x5445524345535f5f)))"#;
    let secret_writer = program(Language::Wat, &command(body));
    let first = sandbox
        .execute_blocking(secret_writer.clone(), limits(), vec![])
        .unwrap();
    let other = sandbox
        .execute_blocking(
            program(Language::Python, "x = 'y' * 1000000"),
            limits(),
            vec![],
        )
        .unwrap();
    let second = sandbox
        .execute_blocking(secret_writer.clone(), limits(), vec![])
        .unwrap();
    assert_eq!(other.outcome, Outcome::Ok);
    assert_eq!(first.stdout, "\0".repeat(16));
    assert_eq!(
        second.stdout, first.stdout,
        "memory from the previous run leaked"
    );
}

#[test]
fn fifty_concurrent_hostile_executions_do_not_stop_a_benign_one() {
    let hostile = [
        "while True: pass",
        "x = bytearray(1 << 30)",
        "while True: print('x' * 1000)",
        "def f(): f()\nf()",
    ];
    // Enough slots for all of them: the service's admission queue is what bounds concurrency.
    let sandbox = Arc::new(Sandbox::new(&settings(64)).unwrap());
    let short = Limits {
        timeout_ms: 2_000,
        memory_bytes: 32 << 20,
        ..limits()
    };
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let code = hostile[i % hostile.len()];
            let sandbox = sandbox.clone();
            std::thread::Builder::new()
                .stack_size(16 << 20)
                .spawn(move || {
                    sandbox
                        .execute_blocking(program(Language::Python, code), short, vec![])
                        .unwrap()
                })
                .unwrap()
        })
        .collect();
    let benign = sandbox
        .execute_blocking(
            program(Language::Python, "print(sum(range(10)))"),
            limits(),
            vec![],
        )
        .unwrap();
    assert_eq!(
        (benign.outcome, benign.stdout.as_str()),
        (Outcome::Ok, "45\n")
    );
    for thread in threads {
        assert_ne!(thread.join().unwrap().outcome, Outcome::Ok);
    }
    let after = sandbox
        .execute_blocking(program(Language::Python, "print('ok')"), limits(), vec![])
        .unwrap();
    assert_eq!(after.stdout, "ok\n");
}

#[test]
fn a_read_only_dataset_can_be_read_but_not_written() {
    let mounts = [Mount {
        host: repo().join("sandbox-host/datasets/demo"),
        guest: "/data/demo".into(),
        writable: false,
    }];
    let read = "print(open('/data/demo/cities.csv').readline().strip())";
    let report = sandbox()
        .execute_blocking(program(Language::Python, read), limits(), mounts.to_vec())
        .unwrap();
    assert_eq!(report.stdout, "city,population\n");
    let write = "open('/data/demo/new.txt', 'w').write('x')";
    let report = sandbox()
        .execute_blocking(program(Language::Python, write), limits(), mounts.to_vec())
        .unwrap();
    assert_eq!(report.outcome, Outcome::Error);
    assert!(!repo().join("sandbox-host/datasets/demo/new.txt").exists());
}

#[test]
fn a_scratch_directory_is_writable() {
    let dir = tempfile::tempdir().unwrap();
    let mounts = [Mount {
        host: dir.path().to_owned(),
        guest: "/scratch".into(),
        writable: true,
    }];
    let code = "open('/scratch/a.txt', 'w').write('kept'); print(open('/scratch/a.txt').read())";
    let report = sandbox()
        .execute_blocking(program(Language::Python, code), limits(), mounts.to_vec())
        .unwrap();
    assert_eq!(report.stdout, "kept\n");
}

/// Runs `code` with a 1 s deadline and checks it ends as a timeout soon after that.
fn assert_sleep_ends_at_the_deadline(language: Language, code: &str) {
    let limits = Limits {
        timeout_ms: 1_000,
        ..limits()
    };
    let report = run_with(language, code, limits);
    assert_eq!(report.outcome, Outcome::Timeout, "{language:?}: {report:?}");
    assert!(report.detail.as_deref().unwrap_or("").contains("deadline"));
    // The run's own clock (from before compiling): a sleep of 100 s ended at the 1 s deadline.
    assert!(
        report.duration_ms < 1_500.0,
        "{language:?} ended {} ms after start, for a 1 s deadline",
        report.duration_ms
    );
    assert_still_serving();
}

/// The shared sandbox answers a benign run normally after a hostile one.
fn assert_still_serving() {
    let report = python("print(6*7)");
    assert_eq!(
        (report.outcome, report.stdout.as_str()),
        (Outcome::Ok, "42\n"),
        "{report:?}"
    );
}

#[test]
fn sleeping_in_python_ends_at_the_deadline() {
    assert_sleep_ends_at_the_deadline(Language::Python, "import time\ntime.sleep(100)");
}

#[test]
fn sleeping_in_javascript_ends_at_the_deadline() {
    // `--std` makes `os` a global.
    assert_sleep_ends_at_the_deadline(Language::Javascript, "os.sleep(100000);");
    assert_sleep_ends_at_the_deadline(
        Language::Javascript,
        "os.setTimeout(() => console.log('late'), 100000);",
    );
}

#[test]
fn a_raw_poll_oneoff_ends_at_the_deadline() {
    // One relative clock subscription of 100 s at address 0; the event goes to 64, the count to 96.
    let module = r#"(module
         (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
         (memory (export "memory") 1)
         (data (i32.const 8) "\00")
         (data (i32.const 16) "\01\00\00\00")
         (data (i32.const 24) "\00\e8\76\48\17\00\00\00")
         (func (export "_start") (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 96)))))"#;
    assert_sleep_ends_at_the_deadline(Language::Wat, module);
}

#[test]
fn a_short_sleep_still_sleeps_and_returns() {
    let started = std::time::Instant::now();
    let report = python(
        "import time\nt = time.monotonic()\ntime.sleep(0.2)\nprint(time.monotonic() - t >= 0.2)",
    );
    assert_eq!(
        (report.outcome, report.stdout.as_str()),
        (Outcome::Ok, "True\n"),
        "{report:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(200));
}

#[test]
fn a_dropped_execution_cancels_its_sleeping_guest_and_frees_its_slot() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Arc::new(Sandbox::new(&settings(1)).unwrap());
    let limits = Limits {
        timeout_ms: 60_000,
        ..limits()
    };
    runtime.block_on(async {
        let (held, released) = tokio::sync::oneshot::channel::<()>();
        let sleeper = sandbox.execute(
            program(Language::Python, "import time\ntime.sleep(100)"),
            limits,
            vec![],
            held,
        );
        // The client gives up after 300 ms: its request future is dropped.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), sleeper)
                .await
                .is_err()
        );
        let started = std::time::Instant::now();
        // The guest lets go of what it held once it has stopped.
        let _ = released.await;
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        let report = sandbox
            .execute(program(Language::Python, "print(6*7)"), limits, vec![], ())
            .await
            .expect("the only slot is free again");
        assert_eq!(report.stdout, "42\n");
    });
}

#[test]
fn a_compile_heavy_module_is_refused_before_it_is_compiled() {
    let huge_body = format!(
        r#"(module (memory (export "memory") 1) (func (export "_start") {}))"#,
        "nop ".repeat(500_000)
    );
    let many_functions = format!(
        r#"(module (memory (export "memory") 1) {} (func (export "_start")))"#,
        "(func)".repeat(20_000)
    );
    for code in [huge_body, many_functions] {
        let refused = sandbox().execute_blocking(program(Language::Wat, &code), limits(), vec![]);
        let Err(sandbox_host::sandbox::ExecutionError::InvalidModule(reason)) = refused else {
            panic!("expected an invalid module, got {refused:?}")
        };
        // The shape check's wording: the module was refused before Cranelift saw it.
        assert!(reason.contains("at most"), "{reason}");
    }
    assert_eq!(python("print(6*7)").stdout, "42\n");
}

#[test]
fn a_scratch_flood_is_stopped_at_its_quota() {
    let scratch = tempfile::tempdir().unwrap();
    let mount = Mount {
        host: scratch.path().to_owned(),
        guest: "/scratch".into(),
        writable: true,
    };
    let floods = [
        "f = open('/scratch/big', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))",
        "i = 0\nwhile True:\n    open(f'/scratch/f{i}', 'w').close()\n    i += 1",
    ];
    for flood in floods {
        let report = sandbox()
            .execute_blocking(
                program(Language::Python, flood),
                limits(),
                vec![mount.clone()],
            )
            .unwrap();
        assert_eq!(report.outcome, Outcome::ScratchLimit, "{report:?}");
        // How far past the quota a flood gets depends on the scheduler (the directory is
        // measured every 50 ms), so only a bound that no run under any load comes near is
        // asserted: a flood left to its 5 s deadline writes gigabytes.
        let bytes: u64 = std::fs::read_dir(scratch.path())
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .sum();
        assert!(bytes < 1 << 30, "{bytes} bytes reached the disk");
        for entry in std::fs::read_dir(scratch.path()).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    assert_eq!(python("print(6*7)").stdout, "42\n");
}

#[test]
fn compiling_counts_against_the_deadline() {
    // A module near the shape bounds compiles for longer than a 1 ms deadline allows.
    let module = format!(
        r#"(module (memory (export "memory") 1) {} (func (export "_start")))"#,
        "(func (result i32) (i32.const 1))".repeat(5_000)
    );
    let limits = Limits {
        timeout_ms: 1,
        ..limits()
    };
    let report = run_with(Language::Wat, &module, limits);
    assert_eq!(report.outcome, Outcome::Timeout, "{report:?}");
    assert!(report.detail.unwrap().contains("deadline"));
    assert_still_serving();
}

#[test]
fn prestarted_instances_serve_one_execution_each_and_are_replaced() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = Arc::new(Sandbox::new(&settings(2)).unwrap());
    sandbox.start_prestarting().unwrap();
    let ready = |count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while sandbox.prestarted_ready() < count {
            assert!(std::time::Instant::now() < deadline, "never refilled");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    ready(2);
    runtime.block_on(async {
        let code = "import random\nprint('mine' in globals(), random.random())\nmine = 1";
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let report = sandbox
                .execute(program(Language::Python, code), limits(), vec![], ())
                .await
                .unwrap();
            assert!(report.stdout.starts_with("False "), "{report:?}");
            assert!(seen.insert(report.stdout), "an instance served twice");
        }
        // Arguments need an instance started with them: the usual path, the same answer.
        let with_args = Program {
            args: vec!["a".into()],
            ..program(Language::Python, "import sys\nprint(sys.argv)")
        };
        let report = sandbox
            .execute(with_args, limits(), vec![], ())
            .await
            .unwrap();
        assert_eq!(report.stdout, "['-c', 'a']\n");
        // A cap below what a prestarted instance already holds is not met by one.
        let tiny = Limits {
            memory_bytes: 16 << 20,
            ..limits()
        };
        let report = sandbox
            .execute(program(Language::Python, "print(1)"), tiny, vec![], ())
            .await
            .unwrap();
        assert_eq!(report.outcome, Outcome::MemoryLimit);
    });
    ready(2);
}
