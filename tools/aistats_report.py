"""The AISTATS paper's networks: parameter counts next to the paper's, and how much IBP keeps.

    python tools/aistats_report.py --param-counts
    python tools/aistats_report.py --ibp-report aistats_softmax_mnist.lwta_ibp_u2 [--weights FOLDER]
"""
from lwta_zoo.models.aistats import main

if __name__ == '__main__':
    main()
