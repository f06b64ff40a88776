# prod on one VM: an EC2 instance running K3s; cloud-init installs K3s and applies the
# rendered k8s/overlays/prod (passed gzipped in the user data).

data "aws_ami" "debian" {
  most_recent = true
  owners      = ["136693071363"] # Debian's AWS account

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }
  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  name = "meshlab-prod"
  user_data = templatefile("${path.module}/cloud-init.sh", {
    manifests_b64 = base64gzip(file("${path.module}/${var.manifests_path}"))
    image         = var.image
  })
}

resource "aws_key_pair" "meshlab" {
  key_name   = var.ssh_key_name
  public_key = file(pathexpand(var.ssh_public_key_path))
}

resource "aws_security_group" "meshlab" {
  name        = local.name
  description = "meshlab on K3s: HTTP for mesh.local, SSH and the API from allowed_cidr"

  ingress {
    description = "HTTP (K3s' Traefik ingress)"
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  ingress {
    description = "SSH"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.allowed_cidr]
  }
  ingress {
    description = "Kubernetes API"
    from_port   = 6443
    to_port     = 6443
    protocol    = "tcp"
    cidr_blocks = [var.allowed_cidr]
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "meshlab" {
  ami                    = data.aws_ami.debian.id
  instance_type          = var.instance_type
  key_name               = aws_key_pair.meshlab.key_name
  vpc_security_group_ids = [aws_security_group.meshlab.id]
  user_data              = local.user_data

  root_block_device {
    volume_size = 20
    volume_type = "gp3"
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = {
    Name = local.name
  }
}
