//! Reading a job's deployment for `detach: false` (Terraform's `nomad_job` `detach = false`;
//! `nomad job run` monitors the same way: the evaluation, then the deployment it names): which
//! deployment belongs to the job version tend registered, and what its status means: healthy,
//! failed with Nomad's reason, or still waiting, with the progress line `tend apply` and
//! `tend status` show.
//!
//! Statuses and descriptions are `nomad/structs/deployment.go`'s (hashicorp/nomad at
//! aa026cc9): `successful` is the only healthy end; `failed` and `cancelled` end it otherwise;
//! `running`, `paused`, `pending`, `blocked`, `initializing` and `unblocking` are on the way.
//!
//! Pure.

use super::client::{Deployment, JobInfo};

/// What a deployment says.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Healthy,
    /// The deployment ended without becoming healthy: Nomad's reason, with the counts.
    Failed(String),
    /// Still on its way: the progress line.
    Waiting(String),
}

/// An evaluation the scheduler is done with.
pub fn eval_done(status: &str) -> bool {
    matches!(status, "complete" | "failed" | "canceled")
}

/// Whether `d` tracks the job version `info` describes (the same incarnation: a job stopped,
/// purged and registered again starts over with a new CreateIndex).
pub fn belongs(d: &Deployment, info: &JobInfo) -> bool {
    d.job_version == info.version && d.job_create_index == info.create_index
}

/// The first 8 characters of an ID, as Nomad's CLI shows them.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn counts(d: &Deployment) -> (u64, u64, u64) {
    d.task_groups.values().fold((0, 0, 0), |(h, u, t), g| {
        (
            h + g.healthy_allocs,
            u + g.unhealthy_allocs,
            t + g.desired_total,
        )
    })
}

pub fn verdict(d: &Deployment) -> Verdict {
    let (healthy, unhealthy, total) = counts(d);
    match d.status.as_str() {
        "successful" => Verdict::Healthy,
        "failed" | "cancelled" => Verdict::Failed(format!(
            "deployment {} {}: {} ({healthy}/{total} healthy, {unhealthy} unhealthy allocations)",
            short(&d.id),
            d.status,
            if d.status_description.is_empty() {
                "no reason given"
            } else {
                &d.status_description
            },
        )),
        _ => Verdict::Waiting(format!(
            "waiting for {healthy}/{total} healthy allocations (deployment {} {}: {})",
            short(&d.id),
            d.status,
            d.status_description
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::nomad::client::DeploymentState;

    fn deployment(status: &str, why: &str, healthy: u64) -> Deployment {
        Deployment {
            id: "0b3f6c2e-1111-2222-3333-444455556666".into(),
            job_version: 2,
            job_create_index: 17,
            status: status.into(),
            status_description: why.into(),
            task_groups: [(
                "web".to_owned(),
                DeploymentState {
                    desired_total: 2,
                    placed_allocs: 2,
                    healthy_allocs: healthy,
                    unhealthy_allocs: 0,
                },
            )]
            .into(),
        }
    }

    #[test]
    fn statuses_read_as_nomad_defines_them() {
        assert_eq!(
            verdict(&deployment("running", "Deployment is running", 1)),
            Verdict::Waiting(
                "waiting for 1/2 healthy allocations (deployment 0b3f6c2e running: Deployment is running)"
                    .into()
            )
        );
        assert_eq!(
            verdict(&deployment(
                "successful",
                "Deployment completed successfully",
                2
            )),
            Verdict::Healthy
        );
        assert_eq!(
            verdict(&deployment("failed", "Failed due to progress deadline", 0)),
            Verdict::Failed(
                "deployment 0b3f6c2e failed: Failed due to progress deadline (0/2 healthy, 0 unhealthy allocations)"
                    .into()
            )
        );
        assert!(matches!(
            verdict(&deployment(
                "cancelled",
                "Cancelled due to newer version of job",
                0
            )),
            Verdict::Failed(_)
        ));
        assert!(eval_done("complete") && !eval_done("pending") && !eval_done("blocked"));
        let info = JobInfo {
            version: 2,
            create_index: 17,
            ..JobInfo::default()
        };
        assert!(belongs(&deployment("running", "", 0), &info));
        let again = JobInfo {
            create_index: 40,
            ..info
        };
        assert!(!belongs(&deployment("running", "", 0), &again));
    }
}
