# Faster R-CNN R-50 FPN trained and evaluated on COCO's 'person' class only: the dataset keeps the
# images with persons, label 0 is 'person', the box head predicts one class.
_base_ = './faster_rcnn_r50_fpn_1x_coco.py'
classes = ('person', )
model = dict(roi_head=dict(bbox_head=dict(num_classes=len(classes))))
data = dict(
    train=dict(classes=classes),
    val=dict(classes=classes),
    test=dict(classes=classes))
