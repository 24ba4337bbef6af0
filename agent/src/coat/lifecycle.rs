//! An edge host's part in a service's life outside migrations: Deploy creates it here, Remove
//! (in `mod.rs`, shared with Abort and Release) takes it away.

use std::collections::BTreeMap;

use mose_protocol::steps::{Deploy, Done};
use mose_protocol::volumes::check_volumes;
use tracing::{info, warn};

use super::error::{runtime, CoatError, Result};
use super::host::Host;
use super::naming::{check_service, host_ifname, netns_name, volume_name};
use super::Inner;
use crate::runtime::{CreateSpec, NamedVolume, Netns};

/// The label that marks a container MOSE deployed (its value is the service name).
pub const SERVICE_LABEL: &str = "io.mose.service";

impl<H: Host> Inner<H> {
    /// The endpoint with the allocated identity, the local steering toward it, then the
    /// container in it, created and started. A repeat finds the service running in its
    /// namespace and changes nothing; any other container of that name is refused, never
    /// replaced.
    #[tracing::instrument(name = "coat.deploy", skip(self, d), fields(service = %d.spec.name))]
    pub(super) async fn deploy(&self, d: &Deploy) -> Result<Done> {
        let spec = &d.spec;
        check_service(&spec.name)?;
        check_volumes(&d.volumes).map_err(|e| CoatError::Invalid(e.to_string()))?;
        let netns = self.host.netns_path(&netns_name(&spec.name));
        if let Some(info) = self.container(&spec.name).await? {
            let ours = info.netns_path().as_deref() == Some(netns.as_path());
            return match (ours, info.state.running) {
                (true, true) => Ok(Done),
                _ => Err(CoatError::State(format!(
                    "a container named {} already exists on this host ({}); remove it or \
                     deploy under another name",
                    spec.name, info.state.status
                ))),
            };
        }
        self.require_image(spec).await?;
        // A new service starts with empty volumes; one left by a service of the same name is
        // somebody's data, not ours to reuse or delete.
        if let Some(left) = self.volumes_of(&spec.name).await?.first() {
            return Err(CoatError::State(format!(
                "volume {left} of a service named {} already exists on this host; remove it \
                 (`podman volume rm {left}`) or deploy under another name",
                spec.name
            )));
        }
        let ofport = self.ensure_endpoint(spec).await?;
        let net = &spec.network;
        self.steer_to(net.ip, net.mac, &host_ifname(&spec.name))
            .await?;
        let create = CreateSpec {
            name: spec.name.clone(),
            image: spec.image.clone(),
            command: (!d.args.is_empty()).then(|| d.args.clone()),
            env: d.env.clone(),
            labels: BTreeMap::from([(SERVICE_LABEL.to_string(), spec.name.clone())]),
            netns: Netns::Path(netns),
            volumes: d
                .volumes
                .iter()
                .map(|v| NamedVolume {
                    name: volume_name(&spec.name, &v.name),
                    dest: v.path.clone(),
                })
                .collect(),
            ..CreateSpec::default()
        };
        if let Err(e) = self.host.run_container(&create).await {
            // A created but unstarted container would make every repeat refuse the name, and
            // its new volumes every repeat's check above.
            if let Err(cleanup) = self.host.remove(&spec.name).await {
                warn!(error = %cleanup, "cannot remove the container that failed to start");
            }
            if let Err(cleanup) = self.remove_volumes(&spec.name, "deploy").await {
                warn!(error = %cleanup, "cannot remove the volumes of the failed start");
            }
            return Err(runtime(format!("start the container of {}", spec.name))(e));
        }
        info!(ip = %net.ip, ofport, image = %spec.image, volumes = d.volumes.len(), "service deployed");
        Ok(Done)
    }
}
