output "public_ip" {
  description = "The instance's public address"
  value       = aws_instance.meshlab.public_ip
}

output "public_dns" {
  description = "The instance's public DNS name"
  value       = aws_instance.meshlab.public_dns
}

output "ssh_command" {
  description = "SSH to the instance (Debian's user is admin)"
  value       = "ssh admin@${aws_instance.meshlab.public_ip}"
}

output "mesh_url" {
  description = "Service a through the ingress (sends Host: mesh.local)"
  value       = "curl -H 'Host: mesh.local' http://${aws_instance.meshlab.public_ip}/"
}
