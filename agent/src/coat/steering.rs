//! The flows this agent is responsible for, persisted: OvS keeps flows only in ovs-vswitchd's
//! memory, so a restarted switch (or host) forgets every steering the migrations and
//! deployments installed. Each steer and unsteer goes through here and is written down in
//! `<work_dir>/steering.json` (service address → MAC and the port's name, not its number:
//! numbers change when ports are re-added); a starting agent reasserts what the file lists.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use mose_overlay::netns::MacAddr;
use mose_overlay::ServiceAddr;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::{io, overlay, Result};
use super::host::Host;
use super::Inner;

/// One service's steering: its MAC and the bridge port its traffic goes out of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steered {
    /// The service's MAC.
    pub mac: [u8; 6],
    /// The port (by name) the flows point at.
    pub port: String,
}

fn table_path(work_dir: &Path) -> PathBuf {
    work_dir.join("steering.json")
}

/// The table as written; an absent file is an empty table.
pub fn load(work_dir: &Path) -> Result<BTreeMap<Ipv4Addr, Steered>> {
    let path = table_path(work_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io("read the steering table", &path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(io("read the steering table", &path)(e)),
    }
}

fn save(work_dir: &Path, table: &BTreeMap<Ipv4Addr, Steered>) -> Result<()> {
    let path = table_path(work_dir);
    std::fs::create_dir_all(work_dir).map_err(io("create the work directory", work_dir))?;
    let json = serde_json::to_vec_pretty(table).map_err(|e| {
        io("write the steering table", &path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        ))
    })?;
    // Written whole and renamed: a crash leaves the old table or the new one.
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, json).map_err(io("write the steering table", &partial))?;
    std::fs::rename(&partial, &path).map_err(io("name the steering table", &path))
}

impl<H: Host> Inner<H> {
    /// Steers `ip`/`mac` out of the bridge port `port` (replacing its flows atomically) and
    /// records it. Returns the port's OpenFlow number.
    pub(super) async fn steer_to(&self, ip: Ipv4Addr, mac: [u8; 6], port: &str) -> Result<u32> {
        let ofport = self
            .host
            .ofport(port)
            .await
            .map_err(overlay(format!("find the bridge port {port}")))?;
        self.host
            .steer(
                ServiceAddr {
                    ip,
                    mac: MacAddr(mac),
                },
                ofport,
            )
            .await
            .map_err(overlay(format!(
                "steer {ip} to {port} (OpenFlow port {ofport})"
            )))?;
        let _held = self.steering.lock().await;
        let mut table = load(self.work_dir())?;
        table.insert(
            ip,
            Steered {
                mac,
                port: port.to_string(),
            },
        );
        save(self.work_dir(), &table)?;
        Ok(ofport)
    }

    /// Removes the flows of `ip` and forgets them.
    pub(super) async fn unsteer(&self, ip: Ipv4Addr) -> Result<()> {
        self.host
            .unsteer(ip)
            .await
            .map_err(overlay(format!("remove the flows of {ip}")))?;
        let _held = self.steering.lock().await;
        let mut table = load(self.work_dir())?;
        if table.remove(&ip).is_some() {
            save(self.work_dir(), &table)?;
        }
        Ok(())
    }

    /// Installs again every steering the table lists: after a restart of the agent, of
    /// ovs-vswitchd or of the host, the flows are as the last steps left them. An entry whose
    /// port is gone is reported and kept (the port may come back). Returns how many were
    /// reasserted.
    pub(super) async fn reassert_steering(&self) -> Result<usize> {
        let table = load(self.work_dir())?;
        let mut done = 0;
        for (ip, s) in &table {
            let ofport = match self.host.ofport(&s.port).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(%ip, port = %s.port, error = %e, "cannot reassert a steering: port missing");
                    continue;
                }
            };
            let svc = ServiceAddr {
                ip: *ip,
                mac: MacAddr(s.mac),
            };
            match self.host.steer(svc, ofport).await {
                Ok(()) => done += 1,
                Err(e) => warn!(%ip, port = %s.port, error = %e, "cannot reassert a steering"),
            }
        }
        if !table.is_empty() {
            info!(
                reasserted = done,
                listed = table.len(),
                "steering reasserted"
            );
        }
        Ok(done)
    }
}
