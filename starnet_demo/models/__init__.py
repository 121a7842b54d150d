"""The network: timm's StarNet as an ultralytics backbone, the YOLOv8n detector around it, rewrites, star hooks."""
