import sys

from deploy.ecs.deploy import main

sys.exit(main())
