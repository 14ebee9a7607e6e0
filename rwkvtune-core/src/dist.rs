//! Data-parallel training across processes: one process per device, each holding a full
//! replica; after every accumulation window the gradients are summed by a ring all-reduce over
//! TCP. Every rank starts from the same weights and applies the same summed gradient with the
//! same AdamW, so replicas stay bit-identical without ever broadcasting weights.
//!
//! Rendezvous uses torchrun's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`,
//! `LOCAL_RANK`), so any launcher that sets it works; `rwkvtune sft --devices N` sets it itself.
//! Rank 0 listens on the master address; the others connect, send the address of their own ring
//! listener, and receive everyone's; then each rank connects to its right neighbour and accepts its
//! left one. The reduction order of each element is fixed by the world size, and every rank
//! receives the same final bits.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A rendezvous variable is missing or malformed.
    #[error("environment variable {var}: {msg} (each process needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `rwkvtune sft --devices N` sets them, as torchrun does)")]
    Env { var: &'static str, msg: String },
    /// The rendezvous did not complete.
    #[error("rendezvous at {addr}: {msg}")]
    Rendezvous { addr: String, msg: String },
    /// A peer went away or stalled during a collective.
    #[error("rank {rank}: {what} rank {peer} failed: {source} (rank {peer} probably stopped: see its own error)")]
    Peer {
        rank: usize,
        peer: usize,
        what: &'static str,
        source: std::io::Error,
    },
}

/// How long a collective waits for a peer before giving up: long enough for rank 0 to write a
/// large checkpoint while the others already wait in the next step.
pub const DEFAULT_COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long the rendezvous waits for every rank to show up.
pub const DEFAULT_RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

const HELLO: &str = "rwkvtune-ring-1";

/// Where a process sits in a data-parallel run, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world: usize,
    /// Index of this process's device on its machine (`LOCAL_RANK`, else `rank`).
    pub local_rank: usize,
    pub master: String,
}

impl RankEnv {
    /// `None` when `WORLD_SIZE` is unset (a single-process run).
    pub fn from_env() -> Result<Option<RankEnv>, DistError> {
        Self::from_vars(|var| std::env::var(var).ok())
    }

    /// As [`Self::from_env`], reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<RankEnv>, DistError> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let num = |var: &'static str, v: Option<String>| -> Result<usize, DistError> {
            let v = v.ok_or(DistError::Env {
                var,
                msg: "not set".into(),
            })?;
            v.trim().parse().map_err(|_| DistError::Env {
                var,
                msg: format!("`{v}` is not a non-negative integer"),
            })
        };
        let world = num("WORLD_SIZE", Some(world))?;
        let rank = num("RANK", get("RANK"))?;
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        if world == 0 || rank >= world {
            return Err(DistError::Env {
                var: "RANK",
                msg: format!("rank {rank} is not below WORLD_SIZE {world}"),
            });
        }
        let addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = num("MASTER_PORT", get("MASTER_PORT"))?;
        Ok(Some(RankEnv {
            rank,
            world,
            local_rank,
            master: format!("{addr}:{port}"),
        }))
    }
}

/// The device a process trains on: `cuda` without an index means this rank's own GPU
/// (`LOCAL_RANK`), so one command line serves every rank.
pub fn rank_device(spec: &str, env: Option<&RankEnv>) -> crate::Result<tch::Device> {
    let device = crate::hub::parse_device(spec)?;
    Ok(match (device, env) {
        (tch::Device::Cuda(_), Some(env)) if !spec.contains(':') => {
            tch::Device::Cuda(env.local_rank)
        }
        _ => device,
    })
}

/// A connected ring of `world` processes.
#[derive(Debug)]
pub struct ProcessGroup {
    rank: usize,
    world: usize,
    /// To rank + 1 (absent when alone).
    right: Option<TcpStream>,
    /// From rank − 1.
    left: Option<TcpStream>,
}

impl ProcessGroup {
    /// A group of one: every collective is the identity.
    pub fn single() -> Self {
        ProcessGroup {
            rank: 0,
            world: 1,
            right: None,
            left: None,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Joins the ring described by `env`, waiting up to `rendezvous` for every rank; later
    /// collectives wait up to `collective` for a peer.
    pub fn connect(
        env: &RankEnv,
        rendezvous: Duration,
        collective: Duration,
    ) -> Result<Self, DistError> {
        let (rank, world) = (env.rank, env.world);
        if world == 1 {
            return Ok(Self::single());
        }
        let fail = |msg: String| DistError::Rendezvous {
            addr: env.master.clone(),
            msg,
        };
        let master = resolve(&env.master).map_err(fail)?;
        let deadline = Instant::now() + rendezvous;
        let ring_addrs = if rank == 0 {
            let listener = TcpListener::bind(master).map_err(|e| {
                fail(format!(
                    "rank 0 cannot listen there ({e}); pick a free MASTER_PORT"
                ))
            })?;
            let ring = TcpListener::bind(SocketAddr::new(master.ip(), 0))
                .map_err(|e| fail(format!("cannot open the ring listener: {e}")))?;
            let own = ring.local_addr().map_err(|e| fail(e.to_string()))?;
            let addrs = gather_addresses(&listener, own, world, deadline).map_err(fail)?;
            (ring, addrs)
        } else {
            let stream = connect_until(master, deadline).map_err(|e| {
                fail(format!(
                    "rank {rank} could not reach rank 0 within {}s: {e}",
                    rendezvous.as_secs()
                ))
            })?;
            let ip = stream.local_addr().map_err(|e| fail(e.to_string()))?.ip();
            let ring = TcpListener::bind(SocketAddr::new(ip, 0))
                .map_err(|e| fail(format!("cannot open the ring listener: {e}")))?;
            let own = ring.local_addr().map_err(|e| fail(e.to_string()))?;
            let addrs = report_address(stream, rank, world, own, deadline).map_err(fail)?;
            (ring, addrs)
        };
        let (ring, addrs) = ring_addrs;
        // Every listener is bound before any address is known, so connecting before accepting
        // cannot deadlock: the connection waits in the listener's backlog.
        let right = connect_until(addrs[(rank + 1) % world], deadline)
            .map_err(|e| fail(format!("rank {rank} cannot reach its right neighbour: {e}")))?;
        (&right)
            .write_all(format!("{HELLO} {rank}\n").as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        let left = accept_until(&ring, deadline)
            .map_err(|e| fail(format!("rank {rank}: left neighbour never connected: {e}")))?;
        let expected = (rank + world - 1) % world;
        let line = read_line(&left, deadline).map_err(fail)?;
        if line != format!("{HELLO} {expected}") {
            return Err(fail(format!(
                "rank {rank} expected rank {expected} on its ring port, got `{line}`"
            )));
        }
        for s in [&right, &left] {
            s.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
            s.set_read_timeout(Some(collective))
                .map_err(|e| fail(e.to_string()))?;
            s.set_write_timeout(Some(collective))
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(ProcessGroup {
            rank,
            world,
            right: Some(right),
            left: Some(left),
        })
    }

    /// Replaces `buf` on every rank by the element-wise sum over ranks (ring reduce-scatter, then
    /// all-gather). Every rank ends with identical bits.
    pub fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), DistError> {
        let (Some(right), Some(left)) = (&self.right, &self.left) else {
            return Ok(());
        };
        let (w, r) = (self.world, self.rank);
        let n = buf.len();
        let bounds = |c: usize| (c * n / w, (c + 1) * n / w);
        let mut incoming = Vec::new();
        // Reduce-scatter: after step s, chunk (r − s − 1) holds the sum over s + 2 ranks.
        for s in 0..w - 1 {
            let (send, recv) = ((r + w - s) % w, (r + 2 * w - s - 1) % w);
            let (a, b) = bounds(send);
            let (c, d) = bounds(recv);
            self.exchange(right, left, &buf[a..b], &mut incoming, d - c)?;
            for (x, y) in buf[c..d].iter_mut().zip(&incoming) {
                *x += *y;
            }
        }
        // All-gather: rank r now owns the finished chunk r + 1 and passes finished chunks on.
        for s in 0..w - 1 {
            let (send, recv) = ((r + 1 + w - s) % w, (r + w - s) % w);
            let (a, b) = bounds(send);
            let (c, d) = bounds(recv);
            self.exchange(right, left, &buf[a..b], &mut incoming, d - c)?;
            buf[c..d].copy_from_slice(&incoming);
        }
        Ok(())
    }

    /// Sum of `values` over ranks in f64 (losses, token counts), added in rank order so every
    /// rank gets the same bits. Each rank fills its own slot of a zeroed buffer with (high, low)
    /// f32 halves of its values (48 significant bits); summing leaves every slot intact.
    pub fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<(), DistError> {
        if self.world == 1 {
            return Ok(());
        }
        let n = values.len();
        let mut wire = vec![0f32; 2 * n * self.world];
        for (i, v) in values.iter().enumerate() {
            let hi = *v as f32;
            let at = 2 * (self.rank * n + i);
            wire[at] = hi;
            wire[at + 1] = (*v - hi as f64) as f32;
        }
        self.all_reduce_sum(&mut wire)?;
        for (i, v) in values.iter_mut().enumerate() {
            *v = (0..self.world)
                .map(|k| {
                    let at = 2 * (k * n + i);
                    wire[at] as f64 + wire[at + 1] as f64
                })
                .sum();
        }
        Ok(())
    }

    /// Sends `out` to the right while receiving `len` values from the left: both directions at
    /// once, so no rank blocks on a full socket buffer.
    fn exchange(
        &self,
        right: &TcpStream,
        left: &TcpStream,
        out: &[f32],
        incoming: &mut Vec<f32>,
        len: usize,
    ) -> Result<(), DistError> {
        let peer_err = |peer: usize, what: &'static str| {
            move |source: std::io::Error| DistError::Peer {
                rank: self.rank,
                peer,
                what,
                source,
            }
        };
        let right_rank = (self.rank + 1) % self.world;
        let left_rank = (self.rank + self.world - 1) % self.world;
        let mut bytes_in = vec![0u8; len * 4];
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || {
                let mut w = right;
                let mut block = Vec::with_capacity(out.len().min(1 << 18) * 4);
                for part in out.chunks(1 << 18) {
                    block.clear();
                    block.extend(part.iter().flat_map(|x| x.to_le_bytes()));
                    w.write_all(&block)?;
                }
                Ok::<(), std::io::Error>(())
            });
            let received = (&*left).read_exact(&mut bytes_in);
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("sender thread panicked")));
            received.map_err(peer_err(left_rank, "receiving from"))?;
            sent.map_err(peer_err(right_rank, "sending to"))
        })?;
        incoming.clear();
        incoming.extend(
            bytes_in
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        for s in [&self.right, &self.left].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("cannot resolve it: {e}"))?
        .next()
        .ok_or_else(|| "it resolves to no address".to_string())
}

fn connect_until(addr: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn accept_until(listener: &TcpListener, deadline: Instant) -> std::io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out",
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn read_line(stream: &TcpStream, deadline: Instant) -> Result<String, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(10))))
        .map_err(|e| e.to_string())?;
    // Byte by byte: a buffered reader could swallow the first collective's data behind the line.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match (&*stream).read(&mut byte) {
            Ok(0) => return Err("a peer closed the connection during the rendezvous".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 1 << 16 => line.push(byte[0]),
            Ok(_) => return Err("a peer sent an over-long rendezvous line".into()),
            Err(e) => return Err(format!("reading from a peer: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Rank 0: collects every rank's ring address, then tells everyone the full list.
fn gather_addresses(
    listener: &TcpListener,
    own: SocketAddr,
    world: usize,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; world];
    addrs[0] = Some(own);
    let mut peers = Vec::new();
    while peers.len() < world - 1 {
        let s = accept_until(listener, deadline).map_err(|e| {
            let missing: Vec<String> = (1..world)
                .filter(|&k| addrs[k].is_none())
                .map(|k| k.to_string())
                .collect();
            format!(
                "ranks {} never connected ({e}); start every rank with the same WORLD_SIZE",
                missing.join(", ")
            )
        })?;
        let line = read_line(&s, deadline)?;
        let mut parts = line.split(' ');
        let (hello, rank, their_world, addr) =
            (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(HELLO), Some(rank), Some(their_world), Some(addr)) =
            (hello, rank, their_world, addr)
        else {
            return Err(format!(
                "a connection that is not an rwkvtune rank: `{line}`"
            ));
        };
        let rank: usize = rank.parse().map_err(|_| format!("bad rank in `{line}`"))?;
        let their_world: usize = their_world
            .parse()
            .map_err(|_| format!("bad world size in `{line}`"))?;
        if their_world != world {
            return Err(format!(
                "rank {rank} has WORLD_SIZE {their_world}, rank 0 has {world}"
            ));
        }
        if rank == 0 || rank >= world || addrs[rank].is_some() {
            return Err(format!("rank {rank} joined twice or is out of range"));
        }
        addrs[rank] = Some(
            addr.parse()
                .map_err(|_| format!("bad address in `{line}`"))?,
        );
        peers.push(s);
    }
    let addrs: Vec<SocketAddr> = addrs.into_iter().flatten().collect();
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let msg = format!("{}\n", list.join(" "));
    for mut p in peers {
        p.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(addrs)
}

/// Ranks > 0: report our ring address to rank 0 and read back everyone's.
fn report_address(
    mut stream: TcpStream,
    rank: usize,
    world: usize,
    own: SocketAddr,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, String> {
    stream
        .write_all(format!("{HELLO} {rank} {world} {own}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let line = read_line(&stream, deadline)
        .map_err(|e| format!("{e} (rank 0 refused this rank or stopped: see its error)"))?;
    let addrs: Vec<SocketAddr> = line
        .split(' ')
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("rank 0 sent a malformed address list `{line}`"))?;
    if addrs.len() != world {
        return Err(format!(
            "rank 0 sent {} addresses for a world of {world}",
            addrs.len()
        ));
    }
    Ok(addrs)
}

/// Sums gradients over the group: `grads[i]` (undefined = zeros of `like[i]`'s shape) travel as
/// one flat fp32 buffer; the results come back on `like[i]`'s device.
pub fn all_reduce_tensors(
    group: &ProcessGroup,
    grads: &[tch::Tensor],
    like: &[tch::Tensor],
) -> Result<Vec<tch::Tensor>, crate::Error> {
    use tch::{Device, Kind, Tensor};
    let parts: Vec<Tensor> = grads
        .iter()
        .zip(like)
        .map(|(g, p)| {
            if g.defined() {
                g.reshape([-1]).to_device(Device::Cpu).to_kind(Kind::Float)
            } else {
                Tensor::zeros([p.numel() as i64], (Kind::Float, Device::Cpu))
            }
        })
        .collect();
    let flat = Tensor::cat(&parts, 0).contiguous();
    let mut values = Vec::<f32>::try_from(&flat)?;
    group.all_reduce_sum(&mut values)?;
    // Separate tensors, as autograd would have made them: same kernels, same results after.
    let mut out = Vec::with_capacity(like.len());
    let mut at = 0;
    for p in like {
        let n = p.numel();
        out.push(
            Tensor::from_slice(&values[at..at + n])
                .view(p.size().as_slice())
                .to_device(p.device()),
        );
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn env(rank: usize, world: usize, port: u16) -> RankEnv {
        RankEnv {
            rank,
            world,
            local_rank: rank,
            master: format!("127.0.0.1:{port}"),
        }
    }

    /// Runs `body` on `world` ranks (threads), each with a connected group.
    fn on_ranks<T: Send>(world: usize, body: impl Fn(ProcessGroup) -> T + Sync) -> Vec<T> {
        let port = free_port();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let body = &body;
                    s.spawn(move || {
                        let g = ProcessGroup::connect(
                            &env(rank, world, port),
                            Duration::from_secs(20),
                            Duration::from_secs(20),
                        )
                        .unwrap();
                        assert_eq!((g.rank(), g.world()), (rank, world));
                        body(g)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn values(rank: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.37 - 11.0 + rank as f32 * 1e-3)
            .collect()
    }

    #[test]
    fn ring_sums_match_a_float64_oracle_and_every_rank_gets_the_same_bits() {
        for world in [2, 3, 4] {
            // Lengths below, at and above the world size, and one that does not divide evenly.
            for n in [1, world, 1000, 262_147] {
                let results = on_ranks(world, |g| {
                    let mut v = values(g.rank(), n);
                    g.all_reduce_sum(&mut v).unwrap();
                    v
                });
                let inputs: Vec<Vec<f32>> = (0..world).map(|r| values(r, n)).collect();
                for i in 0..n {
                    let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
                    let got = results[0][i] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * exact.abs().max(1.0),
                        "world {world}, n {n}, element {i}: {got} vs {exact}"
                    );
                }
                for r in &results[1..] {
                    assert!(
                        r.iter()
                            .zip(&results[0])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "ranks disagree (world {world}, n {n})"
                    );
                }
            }
        }
    }

    #[test]
    fn two_ranks_add_exactly_like_one_process() {
        let results = on_ranks(2, |g| {
            let mut v = values(g.rank(), 4097);
            g.all_reduce_sum(&mut v).unwrap();
            v
        });
        let (a, b) = (values(0, 4097), values(1, 4097));
        for i in 0..4097 {
            assert_eq!(results[0][i].to_bits(), (a[i] + b[i]).to_bits());
        }
    }

    #[test]
    fn scalar_sums_are_float64_and_identical_on_every_rank() {
        let results = on_ranks(3, |g| {
            let mut v = [1.0 / 3.0 + g.rank() as f64, 1e12 + g.rank() as f64, -2.5];
            g.all_reduce_sum_f64(&mut v).unwrap();
            v
        });
        for r in &results {
            assert_eq!(r, &results[0]);
            assert!((r[0] - (1.0 + 3.0)).abs() < 1e-9, "{}", r[0]);
            assert_eq!(r[1], 3e12 + 3.0);
            assert_eq!(r[2], -7.5);
        }
    }

    #[test]
    fn a_rank_that_stops_makes_its_peers_fail_instead_of_hanging() {
        let results = on_ranks(3, |g| {
            if g.rank() == 2 {
                drop(g);
                return None;
            }
            let mut v = values(g.rank(), 100_000);
            Some(g.all_reduce_sum(&mut v).map_err(|e| e.to_string()))
        });
        for r in results.into_iter().flatten() {
            let err = r.expect_err("the collective cannot complete without rank 2");
            assert!(err.contains("probably stopped"), "{err}");
        }
    }

    #[test]
    fn rendezvous_errors_name_the_problem() {
        // Nobody listens: rank 1 gives up at its deadline.
        let lone = ProcessGroup::connect(
            &env(1, 2, free_port()),
            Duration::from_millis(300),
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(lone.contains("could not reach rank 0"), "{lone}");

        // Disagreeing world sizes.
        let port = free_port();
        let errs: Vec<String> = std::thread::scope(|s| {
            let a = s.spawn(|| {
                ProcessGroup::connect(
                    &env(0, 2, port),
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                )
                .map(|_| ())
                .unwrap_err()
                .to_string()
            });
            let b = s.spawn(|| {
                ProcessGroup::connect(
                    &env(1, 3, port),
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                )
                .map(|_| ())
                .unwrap_err()
                .to_string()
            });
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        assert!(
            errs[0].contains("WORLD_SIZE 3, rank 0 has 2"),
            "{}",
            errs[0]
        );
        assert!(errs[1].contains("rank 0 refused"), "{}", errs[1]);
    }

    #[test]
    fn rank_environment_is_read_like_torchrun_and_checked() {
        let vars = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            RankEnv::from_vars(move |k| m.get(k).cloned())
        };
        assert_eq!(vars(&[]).unwrap(), None);
        let e = vars(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("MASTER_PORT", "29500")])
            .unwrap()
            .unwrap();
        assert_eq!((e.rank, e.world, e.local_rank), (3, 4, 3));
        assert_eq!(e.master, "127.0.0.1:29500");
        let e = vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((e.local_rank, e.master.as_str()), (1, "10.0.0.2:29500"));
        let err = vars(&[("WORLD_SIZE", "2"), ("MASTER_PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RANK: not set"), "{err}");
        let err = vars(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not below WORLD_SIZE 2"), "{err}");
        let err = vars(&[("WORLD_SIZE", "two"), ("RANK", "0"), ("MASTER_PORT", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WORLD_SIZE: `two`"), "{err}");
    }
}
