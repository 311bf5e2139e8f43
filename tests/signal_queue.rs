//! run-chain's signal intake as a launch hands over to the chain's loop, with real signals
//! raised in this test process (its own binary, so no other test shares the handlers): a
//! SIGHUP that came before the chain runs is taken for the reload before the first run, and
//! every other signal that came meanwhile is put back, in order, for the loop (it was left for
//! the loop before; taking the SIGHUP must not lose them). SIGUSR1 during a wait is logged and
//! dropped (a kick ends a cooldown; a waiting launch has none).

use run_chain::signals::{Sig, Signals};

fn raise(sig: i32) {
    // SAFETY: raise with a valid signal number; the handler only writes to a pipe.
    assert_eq!(unsafe { libc::raise(sig) }, 0);
}

#[test]
fn signals_before_the_chain_runs_are_kept_or_put_back_in_order() {
    let signals = Signals::install().expect("install the handlers");

    // During a wait: SIGHUP is kept, SIGUSR1 dropped, SIGTERM returned to the waiting loop.
    raise(libc::SIGHUP);
    raise(libc::SIGUSR1);
    raise(libc::SIGTERM);
    assert_eq!(signals.drain_waiting("t"), vec![Sig::Term]);

    // After the wait's last look: a SIGTERM, a second SIGHUP and a kick came.
    raise(libc::SIGTERM);
    raise(libc::SIGHUP);
    raise(libc::SIGUSR1);
    assert!(signals.take_hup_before_running(), "the SIGHUPs are taken");
    // The others are back in the pipe, in order, for the loop's ppoll and drain.
    let mut fds = [libc::pollfd {
        fd: signals.fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll on one descriptor we hold, no wait.
    assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) }, 1);
    assert_eq!(signals.drain(), vec![Sig::Term, Sig::Usr1]);
    // Taken once: nothing is left.
    assert!(!signals.take_hup_before_running());
    assert!(signals.drain().is_empty());
}
