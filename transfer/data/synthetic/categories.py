"""The categories the synthetic data is labelled with: real COCO, VOC, LVIS and ImageNet tables, and
the synthetic object classes (shapes and the stick-figure person) with the real category each maps onto."""
from collections import namedtuple

# ------------------------------------------------------------------------------ real category tables

# The 80 COCO 2017 categories: (id, name, supercategory), ids 1..90 with COCO's gaps.
COCO_CATEGORIES = (
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"), (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"), (44, "bottle", "kitchen"), (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"), (48, "fork", "kitchen"), (49, "knife", "kitchen"), (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"), (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"),
    (59, "pizza", "food"), (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
)

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO's skeleton: pairs of 1-based keypoint indices
COCO_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

# Real ImageNet wnids (the ten Imagenette classes), one synthetic class each.
IMAGENET_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)

# --------------------------------------------------------------------------------- object classes

# A class of synthetic object and the real category each detection set labels it with (None: used
# only as an ImageNet class).
Shape = namedtuple("Shape", "name colour texture coco_id voc_class lvis_name")
SHAPES = tuple(Shape(*row) for row in (
    # name        colour           texture      COCO id  VOC class     LVIS name (frequency)
    ("circle",   (225, 35, 35),   "solid",     37,      "bottle",     "beachball"),       # r
    ("square",   (35, 75, 230),   "hstripes",  72,      "tvmonitor",  "cube"),            # c
    ("triangle", (40, 185, 60),   "checker",   59,      "boat",       "pennant"),         # r
    ("cross",    (240, 215, 30),  "dstripes",  5,       "aeroplane",  "airplane"),        # f
    ("ring",     (215, 45, 205),  "solid",     60,      "bicycle",    "bagel"),           # c
    ("diamond",  (30, 210, 225),  "dots",      38,      "bird",       "kite"),            # f
    ("star",     (255, 135, 0),   "solid",     None,    None,         None),
    ("hexagon",  (240, 240, 240), "checker",   None,    None,         None),
    ("bar",      (125, 40, 205),  "dstripes",  None,   None,          None),
    ("arrow",    (25, 25, 25),    "hstripes",  None,    None,         None),
))
DETECTION_SHAPES = tuple(s for s in SHAPES if s.coco_id is not None)
PERSON = "person"  # the stick figure; COCO id 1, VOC "person", LVIS "person" (f)
PERSON_COLOURS = {"head": (245, 200, 155), "torso": (120, 30, 160), "limb": (35, 30, 30)}

SHAPE_BY_NAME = {s.name: s for s in SHAPES}
COCO_ID = {s.name: s.coco_id for s in DETECTION_SHAPES} | {PERSON: 1}
VOC_NAME = {s.name: s.voc_class for s in DETECTION_SHAPES} | {PERSON: "person"}
LVIS_NAME = {s.name: s.lvis_name for s in DETECTION_SHAPES} | {PERSON: "person"}
