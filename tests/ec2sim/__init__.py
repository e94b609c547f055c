"""An EC2 host simulator for tests (docs/ec2-host.md): a real IMDSv2 for the simulated instance
(`imds.FakeImds`, built from what moto says about it) and a "hypervisor" (`hypervisor.Hypervisor`)
that hot-plugs a link with each attached ENI's MAC into the host namespace after a delay and removes
it on detach, as EC2 does; `hypervisor.NetUtils` plays Amazon Linux's ec2-net-utils."""
