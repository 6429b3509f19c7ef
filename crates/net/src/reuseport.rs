//! Steering new connections between the listeners of one `SO_REUSEPORT` group.
//!
//! During a graceful handover both load balancers listen on the floating address
//! and the kernel spreads new connections over them. Closing the leaving node's
//! listener would reset the connections still in its queues (mid-handshake ones
//! included). So the leaving node first attaches a one-instruction classic BPF
//! program to the group that sends every new connection to the newest listener (the
//! peer, which bound last), waits for its own queues to empty, and only then closes.
//! The new owner detaches the program when it binds, so ordinary spreading resumes.
//!
//! `setsockopt` with these options has no safe wrapper in std or socket2; the
//! unsafe code is confined here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

// asm-generic values (x86_64, aarch64, riscv, ...); the libc crate has them only
// for Android.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
const SO_DETACH_REUSEPORT_BPF: libc::c_int = 68;
/// `BPF_RET | BPF_K`: return the constant `k`.
const BPF_RET_K: u16 = 0x06;

/// Sends every new connection of `listener`'s group to the listener at `index` (in
/// binding order). An index past the group's end falls back to normal spreading.
pub fn steer_to(listener: &impl AsRawFd, index: u32) -> io::Result<()> {
    let mut program = [libc::sock_filter {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: index,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes any steering program from `listener`'s group (none attached is fine).
pub fn clear(listener: &impl AsRawFd) -> io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: a plain setsockopt with a valid pointer to an int.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_DETACH_REUSEPORT_BPF,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            e => Err(e),
        },
    }
}
