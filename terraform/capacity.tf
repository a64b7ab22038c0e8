# GPU capacity: an Auto Scaling group of ECS GPU-optimised instances behind a capacity provider.
# The group starts and can return to ZERO instances: ECS managed scaling sizes it from the tasks
# the service wants (CapacityProviderReservation), so 0 tasks -> 0 instances -> no GPU bill.
# Managed termination protection keeps scale-in from terminating an instance that still runs a
# task; managed draining drains an instance before the group removes it.

# Only with compute = "gpu"; compute = "cpu" runs the tasks on Fargate and creates none of this.
#
# The AMI: AWS keeps the SSM parameter on the newest recommended ECS GPU AMI for Amazon Linux 2023
# (NVIDIA driver, nvidia-container-toolkit, ECS agent with GPU support; the Amazon Linux 2 one went
# end of life on 2026-06-30). An AMI read fresh on every plan would roll the launch template, and
# with it every instance, whenever AWS publishes a new image. So the value read at the first apply
# is kept (terraform_data with ignore_changes) until the operator moves it on purpose: set
# gpu_ami_id to pin an exact AMI, or `terraform apply -replace=<module>.terraform_data.gpu_ami[0]`
# to take the current recommended one.
data "aws_ssm_parameter" "ecs_gpu_ami" {
  count = local.gpu && var.gpu_ami_id == null ? 1 : 0
  name  = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

resource "terraform_data" "gpu_ami" {
  count = local.gpu && var.gpu_ami_id == null ? 1 : 0
  input = nonsensitive(data.aws_ssm_parameter.ecs_gpu_ami[0].value)

  lifecycle {
    ignore_changes = [input]
  }
}

# The instance types come from the group's mixed instances policy (instance_types, optional
# Spot), not from the template.
resource "aws_launch_template" "gpu" {
  count       = local.gpu ? 1 : 0
  name_prefix = "${var.name}-gpu-"
  image_id    = coalesce(var.gpu_ami_id, one(terraform_data.gpu_ami[*].output))

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance[0].arn
  }

  vpc_security_group_ids = [aws_security_group.instances[0].id]

  # IMDSv2 only, one hop: containers cannot reach the instance role's credentials
  # (awsvpc tasks are also blocked by ECS_AWSVPC_BLOCK_IMDS below).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = var.root_volume_size_gb
      volume_type = "gp3"
      # Cold start: each new instance pulls the image (GiBs) onto this volume.
      throughput            = var.root_volume_throughput
      iops                  = var.root_volume_iops
      encrypted             = true
      delete_on_termination = true
    }
  }

  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'CONFIG'
    ECS_CLUSTER=${var.name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_ENABLE_TASK_IAM_ROLE=true
    ECS_AWSVPC_BLOCK_IMDS=true
    ECS_CONTAINER_STOP_TIMEOUT=${var.stop_timeout_seconds}s
    ECS_ENABLE_CONTAINER_METADATA=true
    ECS_ENABLE_SPOT_INSTANCE_DRAINING=${var.spot}
    CONFIG
  EOT
  )

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { "Name" = "${var.name}-gpu" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "gpu" {
  count               = local.gpu ? 1 : 0
  name_prefix         = "${var.name}-gpu-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = 0
  max_size            = var.max_instances
  desired_capacity    = 0
  # Destroy must not wait for protected instances (managed termination protection keeps them
  # protected while the cluster goes away): terminate them with the group.
  force_delete = true

  # Required by managed termination protection: the capacity provider lifts protection from an
  # instance only once it runs no task.
  protect_from_scale_in = true

  health_check_type         = "EC2"
  health_check_grace_period = 300

  # Spot: replace an instance at risk of interruption before it is reclaimed (the new one starts
  # first; ECS drains the old one, ECS_ENABLE_SPOT_INSTANCE_DRAINING on the two-minute notice).
  capacity_rebalance = var.spot

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = var.spot ? 0 : 100
      on_demand_allocation_strategy            = "prioritized"
      spot_allocation_strategy                 = "price-capacity-optimized"
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.gpu[0].id
        version            = aws_launch_template.gpu[0].latest_version
      }

      dynamic "override" {
        for_each = var.instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }

  # A new launch template version (AMI, user data) replaces the instances. Every instance that
  # runs a task is scale-in protected (managed termination protection): "Refresh" replaces those
  # too, and managed draining moves their tasks off first (SIGTERM, DRAIN_SECONDS; the messages
  # go back to the queue). The default "Ignore" would leave exactly the busy instances on the old
  # AMI. skip_matching: instances already on the new version stay.
  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage       = 0
      skip_matching                = true
      scale_in_protected_instances = "Refresh"
      standby_instances            = "Terminate"
    }
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    create_before_destroy = true
    # ECS managed scaling owns the size of the group.
    ignore_changes = [desired_capacity]
    precondition {
      # One task per instance (one GPU each): the deploy gate (deploy.py's selfcheck, a one-off
      # task on this capacity provider) needs an instance beyond max_tasks, or at full scale it
      # stays PROVISIONING and the deploy (and a rollback through the gate) fails. The same spare
      # lets a rollout at full scale with 100 % minimum healthy place its first new task.
      condition     = var.max_instances > var.max_tasks
      error_message = "max_instances must be at least max_tasks + 1: the deploy gate's selfcheck task needs a GPU instance of its own when the service runs max_tasks."
    }
    precondition {
      condition     = var.root_volume_throughput <= var.root_volume_iops / 4
      error_message = "gp3 allows at most 0.25 MiB/s of throughput per IOPS: raise root_volume_iops to 4 x root_volume_throughput."
    }
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  count = local.gpu ? 1 : 0
  name  = "${var.name}-gpu"

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu[0].arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status = "ENABLED"
      # 100: no idle spare instance; a new task waits for an instance (minutes) when none is free.
      # The deploy gate's extra task gets its instance the same way: max_instances > max_tasks
      # leaves the group room for it (docs/deploy.md, "Room for the deploy gate").
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = min(var.max_instances, 10)
      instance_warmup_period    = 300
    }
  }

  tags = local.tags
}
