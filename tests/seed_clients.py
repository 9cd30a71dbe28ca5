"""The seed document's own client code, as its users run it against the seed's Flask app:
`CheckpointCleanupScheduler` (cleanup_scheduler.py) and `cleanup_once` (the cron script).

Copied unchanged but for the base URL, which the seed hard-codes as http://localhost:5000
(`cleanup_once` takes it as a default argument here) and the `schedule` loop, which is
not part of the HTTP calls.
"""

import logging

import requests

logger = logging.getLogger("seed.cleanup_scheduler")


class CheckpointCleanupScheduler:
    def __init__(self, flask_api_url="http://localhost:5000", keep_count=10):
        self.api_url = flask_api_url
        self.keep_count = keep_count

    def cleanup_all_checkpoints(self):
        """调用Flask API清理所有checkpoint"""
        try:
            logger.info("开始定时清理所有checkpoint...")

            # 调用Flask API
            response = requests.post(
                f"{self.api_url}/api/cleanup/all",
                json={"keep_count": self.keep_count},
                timeout=300,  # 5分钟超时
            )

            if response.status_code == 200:
                result = response.json()
                logger.info(
                    f"清理完成: 处理了{result['processed_threads']}个thread,"
                    f"删除了{result['total_deleted']}个checkpoint"
                )
                return True
            else:
                logger.error(f"清理失败: HTTP {response.status_code}")
                return False

        except Exception as e:
            logger.error(f"清理出错: {e}")
            return False

    def get_cleanup_stats(self):
        """获取清理统计信息"""
        try:
            response = requests.get(f"{self.api_url}/api/cleanup/stats", timeout=30)
            if response.status_code == 200:
                stats = response.json()
                logger.info(
                    f"当前状态: {stats['total_threads']}个thread,"
                    f"共{stats['total_checkpoints']}个checkpoint"
                )
                return stats
            else:
                logger.error(f"获取统计失败: HTTP {response.status_code}")
                return None
        except Exception as e:
            logger.error(f"获取统计出错: {e}")
            return None

    def cleanup_specific_thread(self, thread_id: str):
        """清理特定thread"""
        try:
            response = requests.post(
                f"{self.api_url}/api/cleanup/thread/{thread_id}",
                json={"keep_count": self.keep_count},
                timeout=60,
            )

            if response.status_code == 200:
                result = response.json()
                logger.info(f"清理thread {thread_id}: {result}")
                return True
            else:
                logger.error(f"清理thread {thread_id}失败: HTTP {response.status_code}")
                return False

        except Exception as e:
            logger.error(f"清理thread {thread_id}出错: {e}")
            return False


# cleanup_once.py - 单次执行的清理脚本
def cleanup_once(api_url="http://localhost:5000"):
    try:
        response = requests.post(f"{api_url}/api/cleanup/all", json={"keep_count": 10}, timeout=300)

        if response.status_code == 200:
            result = response.json()
            print(f"清理成功: 删除了{result['total_deleted']}个checkpoint")
            return 0
        else:
            print(f"清理失败: HTTP {response.status_code}")
            return 1

    except Exception as e:
        print(f"清理出错: {e}")
        return 1
