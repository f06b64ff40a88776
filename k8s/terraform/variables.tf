variable "region" {
  description = "AWS region of the instance"
  type        = string
  default     = "eu-west-1"
}

variable "instance_type" {
  description = "EC2 instance type; K3s and the prod overlay fit in 2 vCPU / 2 GiB"
  type        = string
  default     = "t3.small"
}

variable "ssh_key_name" {
  description = "Name of the EC2 key pair created for SSH access"
  type        = string
  default     = "meshlab"
}

variable "ssh_public_key_path" {
  description = "Path of the SSH public key that key pair holds, e.g. ~/.ssh/id_ed25519.pub"
  type        = string
}

variable "allowed_cidr" {
  description = "CIDR allowed to reach SSH (22) and the Kubernetes API (6443), e.g. your.ip/32"
  type        = string
}

variable "manifests_path" {
  description = "The rendered prod overlay: make build ENV=prod OUT=k8s/terraform/prod.yaml"
  type        = string
  default     = "prod.yaml"
}

variable "image" {
  description = "Image reference the VM can pull (pushed by you); replaces the overlay's meshlab image. Empty keeps the overlay's."
  type        = string
  default     = ""
}
