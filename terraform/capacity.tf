# GPU capacity: an Auto Scaling group of ECS GPU-optimised instances behind a capacity provider.
# The group starts and can return to ZERO instances: ECS managed scaling sizes it from the tasks
# the service wants (CapacityProviderReservation), so 0 tasks -> 0 instances -> no GPU bill.
# Managed termination protection keeps scale-in from terminating an instance that still runs a
# task; managed draining drains an instance before the group removes it.

# AWS keeps this parameter on the newest recommended ECS GPU AMI (Amazon Linux 2, NVIDIA driver,
# nvidia-container-toolkit, ECS agent with GPU support).
data "aws_ssm_parameter" "ecs_gpu_ami" {
  name = "/aws/service/ecs/optimized-ami/amazon-linux-2/gpu/recommended/image_id"
}

resource "aws_launch_template" "gpu" {
  name_prefix   = "${var.name}-gpu-"
  image_id      = data.aws_ssm_parameter.ecs_gpu_ami.value
  instance_type = var.instance_type

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  vpc_security_group_ids = [aws_security_group.instances.id]

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
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
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
  name_prefix         = "${var.name}-gpu-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = 0
  max_size            = var.max_instances
  desired_capacity    = 0

  # Required by managed termination protection: the capacity provider lifts protection from an
  # instance only once it runs no task.
  protect_from_scale_in = true

  health_check_type         = "EC2"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 0
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
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = "${var.name}-gpu"

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu.arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status = "ENABLED"
      # 100: no idle spare instance; a new task waits for an instance (minutes) when none is free.
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = min(var.max_instances, 10)
      instance_warmup_period    = 300
    }
  }

  tags = local.tags
}
